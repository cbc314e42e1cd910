"""asgi-micro: Go Micro's ideas for ASGI apps.

A FastAPI or Starlette app becomes a registered micro service: its handlers are served over HTTP
and gRPC, it finds and calls other services by name, and it gets a store, auth, config and locks.
"""

from typing import Any

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
    "ServiceGroup",
    "Wrapper",
    "__version__",
    "current_context",
    "errors",
    "serve",
]


def __getattr__(name: str) -> Any:
    """``ServiceGroup`` and ``serve`` (``asgi_micro.group``), imported on first use: they
    bring uvicorn, which an app served by another server does not need."""
    if name in ("ServiceGroup", "serve"):
        from . import group

        return getattr(group, name)
    raise AttributeError(f"module 'asgi_micro' has no attribute {name!r}")
