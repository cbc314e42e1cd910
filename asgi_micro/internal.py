"""The routes under ``/_micro/``: health, stats and this node's registry record."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from .errors import MethodNotAllowed, NotFound
from .registry.mdns import REGISTRY_PATH
from .responses import send_error, send_response
from .types import Scope, Send

if TYPE_CHECKING:
    from .service import Service

__all__ = ["serve_internal"]


def _health(service: Service) -> tuple[int, dict[str, Any]]:
    status = service.status
    return (200 if status == "serving" else 503), {
        "status": status,
        "service": service.name,
        "version": service.version,
        "node": service.id,
    }


def _stats(service: Service) -> tuple[int, dict[str, Any]]:
    return 200, service.stats.snapshot(service)


def _registry(service: Service) -> tuple[int, dict[str, Any]]:
    return 200, service.record().to_dict()


_ROUTES: dict[str, Callable[[Service], tuple[int, dict[str, Any]]]] = {
    "/_micro/health": _health,
    "/_micro/stats": _stats,
    REGISTRY_PATH: _registry,
}


async def serve_internal(service: Service, scope: Scope, send: Send) -> None:
    route = _ROUTES.get(scope["path"].rstrip("/"))
    if route is None:
        await send_error(send, NotFound(f"no internal route {scope['path']}", id=service.name))
        return
    if scope["method"] not in ("GET", "HEAD"):
        await send_error(send, MethodNotAllowed("internal routes are read-only", id=service.name))
        return
    status, payload = route(service)
    # A draining node closes connections so that callers reconnect to another node.
    headers = [(b"connection", b"close")] if service.draining else []
    await send_response(send, status, orjson.dumps(payload), headers=headers)
