"""The routes under ``/_micro/``: health, stats, Prometheus metrics (``metrics``), this node's
registry record and the AsyncAPI document of its events (``asyncapi.json``), and the ASGI apps
that parts of the service serve there (``internal_apps``: the embedded broker receives events at
``/_micro/broker/``); ``/.well-known/jwks.json``, the public keys that verify the deployment's
tokens; and the probes ``/livez`` and ``/readyz``.

``/livez`` answers 200 whenever the process serves HTTP. ``/readyz`` answers 200 once the node
is registered and while it is not draining, else 503 with the reason: a load balancer or
Kubernetes then sends traffic only to nodes that callers can also find in the registry.

With auth on, the guard decides on each as on any endpoint (named ``GET /_micro/stats``...),
but for the probes, health, the registry record, JWKS and the broker's inbox, which are open:
probes, what mDNS peers fetch, public keys, and events that each carry a token of their own.
``/_micro/metrics`` is covered by the rules (``GET /_micro/metrics``), which by default let
everyone scrape."""

from __future__ import annotations

import asyncio
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

__all__ = [
    "JWKS_PATH",
    "METRICS_PATH",
    "PROBE_PATHS",
    "Exposed",
    "Guarded",
    "Introspectable",
    "Registered",
    "serve_internal",
]

JWKS_PATH = "/.well-known/jwks.json"
METRICS_PATH = "/_micro/metrics"
PROBE_PATHS = frozenset({"/livez", "/readyz"})
"""Served beside ``/_micro/``, where orchestrators look for them, and open to everyone."""


class Guarded(Protocol):
    """What the internal routes need of auth: the public keys, and a decision."""

    def jwks(self) -> dict[str, Any]: ...

    def check_internal(self, context: Context, path: str) -> None: ...


class Exposed(Protocol):
    """What the metrics route needs of the metrics: whether they are on, and a scrape."""

    @property
    def on(self) -> bool: ...

    def expose(self, accept: str = "") -> tuple[bytes, str]: ...


class Registered(Protocol):
    """What readiness needs of the registrar: whether the node is in the registry."""

    @property
    def registered(self) -> asyncio.Event: ...


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

    @property
    def metrics(self) -> Exposed: ...

    @property
    def registrar(self) -> Registered: ...


def _health(service: Introspectable) -> tuple[int, dict[str, Any]]:
    status = service.status
    return (200 if status == "serving" else 503), {
        "status": status,
        "service": service.name,
        "version": service.version,
        "node": service.id,
    }


def _live(service: Introspectable) -> tuple[int, dict[str, Any]]:
    return 200, {"status": "live", "service": service.name, "node": service.id}


def _ready(service: Introspectable) -> tuple[int, dict[str, Any]]:
    status = service.status
    if status != "serving":
        reason = status  # draining, stopped
    elif not service.registrar.registered.is_set():
        reason = "not registered yet"
    else:
        return 200, {"status": "ready", "service": service.name, "node": service.id}
    return 503, {"status": "not ready", "reason": reason, "service": service.name}


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
    "/livez": _live,
    "/readyz": _ready,
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
    path = path.rstrip("/") or path
    if path not in PROBE_PATHS:
        try:
            service.guard.check_internal(read_headers(scope["headers"]) or Context(), path)
        except MicroError as exc:
            exc.id = exc.id or service.name
            await send_error(send, exc)
            return
    metrics = path == METRICS_PATH and service.metrics.on
    route = _ROUTES.get(path)
    if route is None and not metrics:
        await send_error(send, NotFound(f"no internal route {scope['path']}", id=service.name))
        return
    if scope["method"] not in ("GET", "HEAD"):
        await send_error(send, MethodNotAllowed("internal routes are read-only", id=service.name))
        return
    # A draining node closes connections so that callers reconnect to another node.
    headers = [(b"connection", b"close")] if service.pipeline.draining else []
    if route is None:
        body, content_type = service.metrics.expose(_header(scope, b"accept"))
        await send_response(send, 200, body, content_type.encode(), headers=headers)
        return
    status, payload = route(service)
    await send_response(send, status, orjson.dumps(payload), headers=headers)


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return ""


@functools.cache
def _process() -> psutil.Process:
    return psutil.Process()
