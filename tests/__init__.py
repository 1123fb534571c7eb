"""cubed's trial test suite."""
