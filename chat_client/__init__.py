"""chat-client: the terminal client for chatd."""

__version__ = "0.1.0"
