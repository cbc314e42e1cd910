"""FastAPI dependencies, as ``Annotated`` types: ``async def hello(req: Req, ctx: Context)``.

Each resolves on asgi-micro's fast path and over gRPC as well as through FastAPI.

``Session`` is an ``AsyncSession`` on the service's database for the call (``asgi_micro.data``).

``Account`` is the caller's verified account (a 401 without a valid token); ``OptionalAccount``
is ``None`` instead; ``require_scopes("admin")`` is an account that holds those scopes (else
403), as ``admin: Annotated[auth.Account, require_scopes("admin")]``.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from fastapi import Depends

from . import auth as auth_module
from . import client as client_module
from . import context as context_module
from . import events as events_module
from . import service as service_module
from . import store as store_module
from . import sync as sync_module
from .data import Session
from .errors import AUTH_ID, Forbidden, Unauthorized
from .pipeline import Host
from .rpc import micro_dependency

__all__ = [
    "Account",
    "Broker",
    "Client",
    "Config",
    "Context",
    "CurrentService",
    "OptionalAccount",
    "Session",
    "Store",
    "Sync",
    "require_scopes",
    "require_service",
]

T = TypeVar("T")


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


def _config(host: Host | None, context: context_module.Context) -> Any:
    config = require_service(host).config
    if config is None:
        raise RuntimeError("this Service has no config: Service(name, config=Settings)")
    return config.value


Config = Annotated[T, Depends(micro_dependency(_config))]
"""The service's config in force, as its model: ``settings: Config[Settings]``; read per call,
so a handler sees a reload at its next call."""


def _sync(host: Host | None, context: context_module.Context) -> sync_module.Sync:
    return require_service(host).sync


Sync = Annotated[sync_module.Sync, Depends(micro_dependency(_sync))]
"""The service's locks and leader election: ``async with sync.lock("orders/42", ttl=10)``."""

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


def _optional_account(
    host: Host | None, context: context_module.Context
) -> auth_module.Account | None:
    if context.account is None and context.authorization is not None:
        context.account, _ = require_service(host).guard.account_of(context.authorization)
    account: auth_module.Account | None = context.account
    return account


def _account(host: Host | None, context: context_module.Context) -> auth_module.Account:
    if context.account is None:
        if context.authorization is None:
            raise Unauthorized("this endpoint needs a signed-in account", id=AUTH_ID)
        account, reason = require_service(host).guard.account_of(context.authorization)
        if account is None:
            raise Unauthorized(f"this endpoint needs a valid token: {reason}", id=AUTH_ID)
        context.account = account
    found: auth_module.Account = context.account
    return found


def require_scopes(*scopes: str) -> Any:
    """A dependency on the caller's account holding every one of ``scopes``:
    ``admin: Annotated[auth.Account, require_scopes("admin")]``."""
    if not scopes or not all(isinstance(scope, str) and scope for scope in scopes):
        raise ValueError("require_scopes takes one or more non-empty scope names")

    def scoped(host: Host | None, context: context_module.Context) -> auth_module.Account:
        account = _account(host, context)
        missing = [scope for scope in scopes if scope not in account.scopes]
        if missing:
            raise Forbidden(f"{account.id} lacks the scope(s) {', '.join(missing)}", id=AUTH_ID)
        return account

    scoped.__name__ = f"require_scopes({', '.join(scopes)})"
    return Depends(micro_dependency(scoped))


Account = Annotated[auth_module.Account, Depends(micro_dependency(_account))]
"""The caller's verified account; a 401 for a caller without a valid token."""

OptionalAccount = Annotated[
    auth_module.Account | None, Depends(micro_dependency(_optional_account))
]
"""The caller's verified account, or ``None``."""
