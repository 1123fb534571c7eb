"""Tests of cubed.orchestrator."""
