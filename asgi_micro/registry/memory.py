"""An in-process registry: for tests, and for services that share one process."""

from __future__ import annotations

import asyncio
import copy
import weakref
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .base import Event, EventType, Node, Registry, Service

if TYPE_CHECKING:
    from ..plugins import Parts

__all__ = ["MemoryRegistry"]


@dataclass(slots=True)
class _Entry:
    service: Service  # the service record this node was registered with, holding only this node
    expiry: asyncio.TimerHandle | None


@dataclass(eq=False)
class _Hub:
    """The records that the registries of one name share."""

    # (service name, version) -> node id -> entry
    nodes: dict[tuple[str, str], dict[str, _Entry]] = field(default_factory=dict)
    watchers: set[tuple[str | None, asyncio.Queue[Event]]] = field(default_factory=set)


_hubs: weakref.WeakValueDictionary[str, _Hub] = weakref.WeakValueDictionary()


class MemoryRegistry(Registry):
    """Keeps records in this process: ``memory://`` in this object alone (share the instance
    to let several services see each other), ``memory://<name>`` in every registry of that
    name in the process (what services built from the same URL share). Stopping one forgets
    the nodes it registered."""

    def __init__(self, name: str = "") -> None:
        self.url = f"memory://{name}"
        hub = _hubs.get(name) if name else None
        if hub is None:
            hub = _Hub()
            if name:
                _hubs[name] = hub
        self._hub = hub
        self._nodes = hub.nodes
        self._watchers = hub.watchers
        self._own: set[tuple[str, str, str]] = set()

    @classmethod
    def from_url(cls, url: str, *, parts: Parts | None = None) -> MemoryRegistry:
        split = urlsplit(url)
        if split.scheme != "memory" or split.path not in ("", "/") or split.query:
            raise ValueError(f"a memory registry URL is memory:// or memory://<name>, got {url!r}")
        return cls(split.netloc)

    async def stop(self) -> None:
        for name, version, node_id in list(self._own):
            entry = self._nodes.get((name, version), {}).pop(node_id, None)
            if entry is not None and entry.expiry is not None:
                entry.expiry.cancel()
            if not self._nodes.get((name, version), True):
                del self._nodes[(name, version)]
        self._own.clear()

    async def register(self, service: Service, *, ttl: float | None = None) -> None:
        if ttl is not None and ttl <= 0:
            raise ValueError(f"ttl must be positive, got {ttl}")
        entries = self._nodes.setdefault((service.name, service.version), {})
        loop = asyncio.get_running_loop()
        for node in service.nodes:
            record = _single_node(service, node)
            previous = entries.get(node.id)
            if previous is not None and previous.expiry is not None:
                previous.expiry.cancel()
            expiry = None
            if ttl is not None:
                expiry = loop.call_later(ttl, self._expire, service.name, service.version, node.id)
            entries[node.id] = _Entry(record, expiry)
            self._own.add((service.name, service.version, node.id))
            if previous is None:
                self._notify(EventType.CREATE, record)
            elif previous.service != record:
                self._notify(EventType.UPDATE, record)

    async def deregister(self, service: Service) -> None:
        for node in service.nodes:
            self._remove(service.name, service.version, node.id)

    async def get_service(self, name: str) -> list[Service]:
        found = []
        for (service_name, _), entries in self._nodes.items():
            if service_name != name or not entries:
                continue
            records = [entry.service for entry in entries.values()]
            merged = copy.deepcopy(records[-1])  # the newest registration describes the version
            merged.nodes = [copy.deepcopy(record.nodes[0]) for record in records]
            found.append(merged)
        return found

    async def list_services(self) -> list[Service]:
        names = sorted({name for (name, _), entries in self._nodes.items() if entries})
        services = []
        for name in names:
            services.extend(await self.get_service(name))
        return services

    async def watch(self, service: str | None = None) -> AsyncGenerator[Event, None]:
        queue: asyncio.Queue[Event] = asyncio.Queue()
        watcher = (service, queue)
        self._watchers.add(watcher)
        try:
            while True:
                yield await queue.get()
        finally:
            self._watchers.discard(watcher)

    def _expire(self, name: str, version: str, node_id: str) -> None:
        self._remove(name, version, node_id)

    def _remove(self, name: str, version: str, node_id: str) -> None:
        entries = self._nodes.get((name, version))
        if not entries or node_id not in entries:
            return
        entry = entries.pop(node_id)
        self._own.discard((name, version, node_id))
        if entry.expiry is not None:
            entry.expiry.cancel()
        if not entries:
            del self._nodes[(name, version)]
        self._notify(EventType.DELETE, entry.service)

    def _notify(self, type: EventType, record: Service) -> None:
        for wanted, queue in self._watchers:
            if wanted is None or wanted == record.name:
                queue.put_nowait(Event(type, copy.deepcopy(record)))


def _single_node(service: Service, node: Node) -> Service:
    record = copy.deepcopy(service)
    record.nodes = [copy.deepcopy(node)]
    return record
