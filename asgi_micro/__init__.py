"""asgi-micro: Go Micro's ideas for ASGI apps."""

from .__about__ import __version__

__all__ = ["__version__"]
