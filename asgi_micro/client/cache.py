"""A registry cache: lookups answered from memory, kept fresh by ``Registry.watch``.

The first lookup of a service asks the registry and starts a watch on it; events then update
the cached nodes as they come. Every ``refresh`` seconds the next lookup asks the registry
again, in case a watch missed something. When the registry fails, the last answer is served
(stale beats nothing: the nodes are likely still there) and the failure is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import ServiceUnavailable
from ..registry import Event, EventType, Registry
from ..registry import Service as ServiceRecord

__all__ = ["RegistryCache"]

logger = logging.getLogger("asgi_micro")


@dataclass(slots=True)
class _Entry:
    records: dict[str, ServiceRecord] = field(default_factory=dict)  # by version
    fetched_at: float = 0.0
    watcher: asyncio.Task[None] | None = None
    pending: list[Event] | None = None  # events that arrive while a lookup is in flight


class RegistryCache:
    def __init__(self, registry: Registry, *, refresh: float = 30.0, error_id: str = "") -> None:
        self.registry = registry
        self.refresh = refresh
        self.error_id = error_id
        self.on_lookup: Callable[[bool], None] | None = None
        """Told of every lookup: ``True`` when the cache answered it (the metrics count them)."""
        self._entries: dict[str, _Entry] = {}
        self._lookups: dict[str, asyncio.Future[list[ServiceRecord]]] = {}

    async def get(self, name: str) -> list[ServiceRecord]:
        """The service's records; ``[]`` if the registry knows none."""
        entry = self._entries.get(name)
        fresh = (
            entry is not None
            and bool(entry.records)
            and time.monotonic() - entry.fetched_at < self.refresh
        )
        if self.on_lookup is not None:
            self.on_lookup(fresh)
        if fresh:
            assert entry is not None
            return list(entry.records.values())
        pending = self._lookups.get(name)
        if pending is None:  # one registry query at a time per service, however many callers
            pending = asyncio.ensure_future(self._fetch(name))
            self._lookups[name] = pending
            pending.add_done_callback(lambda _: self._lookups.pop(name, None))
        return await asyncio.shield(pending)

    async def _fetch(self, name: str) -> list[ServiceRecord]:
        entry = self._entries.get(name)
        if entry is None:
            entry = self._entries[name] = _Entry()
        if entry.watcher is None or entry.watcher.done():
            # Watch first, then look up: a node that arrives in between is not missed.
            subscribed = asyncio.Event()
            entry.watcher = asyncio.create_task(
                self._watch(name, subscribed), name=f"asgi-micro watch {name}"
            )
            await subscribed.wait()
        entry.pending = []
        try:
            records = await self.registry.get_service(name)
        except Exception as exc:
            if entry.records:
                logger.warning("registry lookup of %s failed; using the last answer: %s", name, exc)
                return list(entry.records.values())
            raise ServiceUnavailable(
                f"registry lookup of {name} failed: {exc}", id=self.error_id
            ) from exc
        finally:
            pending, entry.pending = entry.pending, None
        entry.records = {record.version: copy.deepcopy(record) for record in records}
        for event in pending or ():  # changes seen during the lookup, in order
            self._apply(entry, event)
        if entry.records:
            entry.fetched_at = time.monotonic()
        return list(entry.records.values())

    async def _watch(self, name: str, subscribed: asyncio.Event) -> None:
        while True:
            try:
                events = self.registry.watch(name)
                # Advance the watch once, so that it has subscribed before the lookup runs.
                first = asyncio.ensure_future(anext(events))
                try:
                    await asyncio.sleep(0)
                    subscribed.set()
                    self._receive(name, await first)
                    async for event in events:
                        self._receive(name, event)
                finally:
                    if not first.done():
                        first.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await first
                    await events.aclose()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                subscribed.set()
                logger.warning("watching %s failed, retrying: %s", name, exc)
            await asyncio.sleep(1.0)

    def _receive(self, name: str, event: Event) -> None:
        entry = self._entries.get(name)
        if entry is None:
            return
        if entry.pending is not None:
            entry.pending.append(event)
        else:
            self._apply(entry, event)

    @staticmethod
    def _apply(entry: _Entry, event: Event) -> None:
        changed = event.service
        if event.type is EventType.DELETE:
            gone = {node.id for node in changed.nodes}
            for version, record in list(entry.records.items()):
                record.nodes = [node for node in record.nodes if node.id not in gone]
                if not record.nodes:
                    del entry.records[version]
            return
        if changed.version not in entry.records:
            entry.records[changed.version] = copy.deepcopy(changed)
            return
        record = entry.records[changed.version]
        arrived = {node.id: node for node in changed.nodes}
        record.nodes = [node for node in record.nodes if node.id not in arrived]
        record.nodes.extend(copy.deepcopy(list(arrived.values())))
        if changed.endpoints:  # events may carry less than a full lookup
            record.endpoints = copy.deepcopy(changed.endpoints)
        if changed.metadata:
            record.metadata = dict(changed.metadata)

    async def aclose(self) -> None:
        watchers = [entry.watcher for entry in self._entries.values() if entry.watcher is not None]
        for watcher in watchers:
            watcher.cancel()
        for watcher in watchers:
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        self._entries.clear()
