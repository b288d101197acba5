"""chatd: a fork-per-client chat server."""

__version__ = "0.1.0"
