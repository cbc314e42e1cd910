"""FastAPI dependencies, as ``Annotated`` types: ``async def hello(req: Req, ctx: Context)``.

Each resolves on asgi-micro's fast path and over gRPC as well as through FastAPI.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from . import client as client_module
from . import context as context_module
from . import events as events_module
from . import service as service_module
from . import store as store_module
from .pipeline import Host
from .rpc import micro_dependency

__all__ = ["Broker", "Client", "Context", "CurrentService", "Store", "require_service"]


def require_service(host: Host | None) -> service_module.Service:
    """The running ``Service``, or a clear error saying how to run the app with one."""
    if isinstance(host, service_module.Service):
        return host
    raise RuntimeError(
        "no running Service for this dependency; serve the app with "
        "FastAPI(lifespan=service.lifespan) or app.add_middleware(MicroMiddleware, service=...)"
    )


def _context(host: Host | None, context: context_module.Context) -> context_module.Context:
    return context


def _service(host: Host | None, context: context_module.Context) -> service_module.Service:
    return require_service(host)


def _client(host: Host | None, context: context_module.Context) -> client_module.Client:
    return require_service(host).client


def _store(host: Host | None, context: context_module.Context) -> store_module.Store:
    return require_service(host).store


def _publisher(host: Host | None, context: context_module.Context) -> events_module.Publisher:
    return require_service(host).publisher


Broker = Annotated[events_module.Publisher, Depends(micro_dependency(_publisher))]
"""Publishes events for the service: ``await broker.publish("user.created", user)``."""

Store = Annotated[store_module.Store, Depends(micro_dependency(_store))]
"""The service's store, scoped to its own table."""

Context = Annotated[context_module.Context, Depends(micro_dependency(_context))]
"""The call's ``Micro-*`` metadata, deadline and trace headers."""

CurrentService = Annotated[service_module.Service, Depends(micro_dependency(_service))]
"""The ``Service`` serving the request."""

Client = Annotated[client_module.Client, Depends(micro_dependency(_client))]
"""The service's client, for calling other services."""
