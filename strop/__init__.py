"""strop: agents that sharpen themselves."""

__version__ = "0.1.0"
