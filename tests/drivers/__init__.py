"""Tests of the database drivers and the wire form of their values."""
