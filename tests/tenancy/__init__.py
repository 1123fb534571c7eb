"""Tests of multi-tenancy: hooks, tenants, isolation."""
