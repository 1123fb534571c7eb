"""cubed: Cube's REST API served from one Twisted reactor."""

__version__ = "0.1.0"
