"""The routes under ``/_micro/``: health, stats, this node's registry record and the AsyncAPI
document of its events (``asyncapi.json``), and the ASGI apps that parts of the service serve
there (``internal_apps``: the embedded broker receives events at ``/_micro/broker/``); and
``/.well-known/jwks.json``, the public keys that verify the deployment's tokens.

With auth on, the guard decides on each as on any endpoint (named ``GET /_micro/stats``...),
but for health, the registry record, JWKS and the broker's inbox, which are open: a probe, what
mDNS peers fetch, public keys, and events that each carry a token of their own."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import orjson
import psutil

from .asyncapi import Described, asyncapi
from .context import Context, read_headers
from .errors import MethodNotAllowed, MicroError, NotFound
from .pipeline import Host
from .registry.mdns import REGISTRY_PATH
from .responses import send_error, send_response
from .types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from .registry import Service as ServiceRecord

__all__ = ["JWKS_PATH", "Guarded", "Introspectable", "serve_internal"]

JWKS_PATH = "/.well-known/jwks.json"


class Guarded(Protocol):
    """What the internal routes need of auth: the public keys, and a decision."""

    def jwks(self) -> dict[str, Any]: ...

    def check_internal(self, context: Context, path: str) -> None: ...


class Introspectable(Host, Described, Protocol):
    """What the internal routes show of a service."""

    @property
    def version(self) -> str: ...

    @property
    def id(self) -> str: ...

    @property
    def status(self) -> str: ...

    @property
    def app(self) -> ASGIApp | None: ...

    @property
    def internal_apps(self) -> Mapping[str, ASGIApp]:
        """ASGI apps served under ``/_micro/``, by path prefix."""
        ...

    def record(self) -> ServiceRecord: ...

    @property
    def guard(self) -> Guarded: ...


def _health(service: Introspectable) -> tuple[int, dict[str, Any]]:
    status = service.status
    return (200 if status == "serving" else 503), {
        "status": status,
        "service": service.name,
        "version": service.version,
        "node": service.id,
    }


def _stats(service: Introspectable) -> tuple[int, dict[str, Any]]:
    stats = service.pipeline.stats
    process = _process()
    return 200, {
        "service": service.name,
        "version": service.version,
        "node": service.id,
        "started": stats.started_at,
        "uptime": round(time.time() - stats.started_at, 3) if stats.started_at else 0.0,
        "requests": stats.requests,
        "errors": stats.errors,
        "in_flight": stats.in_flight,
        "memory": process.memory_info().rss,
        "threads": process.num_threads(),
    }


def _registry(service: Introspectable) -> tuple[int, dict[str, Any]]:
    return 200, service.record().to_dict()


def _asyncapi(service: Introspectable) -> tuple[int, dict[str, Any]]:
    return 200, asyncapi(service)


def _jwks(service: Introspectable) -> tuple[int, dict[str, Any]]:
    return 200, service.guard.jwks()


_ROUTES: dict[str, Callable[[Introspectable], tuple[int, dict[str, Any]]]] = {
    "/_micro/health": _health,
    "/_micro/stats": _stats,
    REGISTRY_PATH: _registry,
    "/_micro/asyncapi.json": _asyncapi,
    JWKS_PATH: _jwks,
}


async def serve_internal(
    service: Introspectable, scope: Scope, receive: Receive, send: Send
) -> None:
    path = scope["path"]
    for prefix, app in service.internal_apps.items():
        if path.startswith(prefix):
            await app(scope, receive, send)
            return
    try:
        service.guard.check_internal(read_headers(scope["headers"]) or Context(), path)
    except MicroError as exc:
        exc.id = exc.id or service.name
        await send_error(send, exc)
        return
    route = _ROUTES.get(path.rstrip("/"))
    if route is None:
        await send_error(send, NotFound(f"no internal route {scope['path']}", id=service.name))
        return
    if scope["method"] not in ("GET", "HEAD"):
        await send_error(send, MethodNotAllowed("internal routes are read-only", id=service.name))
        return
    status, payload = route(service)
    # A draining node closes connections so that callers reconnect to another node.
    headers = [(b"connection", b"close")] if service.pipeline.draining else []
    await send_response(send, status, orjson.dumps(payload), headers=headers)


@functools.cache
def _process() -> psutil.Process:
    return psutil.Process()
