"""asgi-micro: Go Micro's ideas for ASGI apps.

A FastAPI or Starlette app becomes a registered micro service: its handlers are served over HTTP
and gRPC, it finds and calls other services by name, and it gets a store, auth, config and locks.
"""

from . import errors
from .__about__ import __version__
from .client import Client, ClientCall, ClientNext, ClientWrapper
from .context import Context, current_context
from .middleware import MicroMiddleware
from .pipeline import Call, Next, Wrapper
from .router import MicroRouter
from .service import Service

__all__ = [
    "Call",
    "Client",
    "ClientCall",
    "ClientNext",
    "ClientWrapper",
    "Context",
    "MicroMiddleware",
    "MicroRouter",
    "Next",
    "Service",
    "Wrapper",
    "__version__",
    "current_context",
    "errors",
]
