"""Service discovery: ``mdns://`` (the embedded default) and ``memory://`` in the core."""

from __future__ import annotations

from ..plugins import Backend, Parts, load_backend
from .base import Endpoint, Event, EventType, Node, Registry, Service

__all__ = ["BACKENDS", "Endpoint", "Event", "EventType", "Node", "Registry", "Service", "from_url"]

DEFAULT_URL = "mdns://"

BACKENDS: dict[str, Backend] = {
    "memory": Backend("asgi_micro.registry.memory:MemoryRegistry"),
    "mdns": Backend("asgi_micro.registry.mdns:MDNSRegistry"),
}


def from_url(url: str, *, parts: Parts | None = None) -> Registry:
    """The registry that ``url`` names, e.g. ``mdns://`` or ``memory://``."""
    registry: Registry = load_backend("registry", url, BACKENDS, parts=parts)
    return registry
