"""cubed: Cube's REST API served from one Twisted reactor."""

from cubed import config

__version__ = "0.1.0"
__all__ = ["config", "__version__"]
