"""Conformance: the recorded answers of the real Cube, replayed against cubed on PostgreSQL."""
