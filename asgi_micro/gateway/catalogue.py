"""The endpoints of every service in a registry, kept current by watching it.

A gateway shows callers what the registry holds now: a service appears with its first node and
goes with its last. ``Catalogue`` watches the registry and, a moment after a change (so that a
burst of heartbeats and registrations costs one look-up), looks the services that changed up
again; every ``resync`` seconds it looks everything up, in case a change went unseen (an mDNS
announcement lost, a watch that broke). ``on_change`` is awaited whenever the endpoints it
offers changed, not on every heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Iterable

from ..registry import Endpoint, Registry
from ..registry import Service as ServiceRecord

__all__ = ["Catalogue", "merged"]

logger = logging.getLogger(__name__)

Endpoints = dict[str, dict[str, Endpoint]]
"""Service name -> endpoint name -> the endpoint, for the services that have live nodes."""


class Catalogue:
    """The endpoints of the services in ``registry`` that have live nodes (``endpoints``)."""

    def __init__(
        self,
        registry: Registry,
        *,
        on_change: Callable[[], Awaitable[None]] | None = None,
        resync: float = 30.0,
        settle: float = 0.2,
    ) -> None:
        self.registry = registry
        self.on_change = on_change
        self.resync = resync
        self.settle = settle
        self.endpoints: Endpoints = {}
        self._changed: set[str] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Watch the registry, then look everything up once. Idempotent."""
        if self._tasks:
            return
        await self.registry.start()
        self._tasks.append(asyncio.create_task(self._watch(), name="catalogue watch"))
        # Let the watch subscribe first; a change it misses in between, the resync catches.
        await asyncio.sleep(0)
        await self.refresh()
        self._tasks.append(asyncio.create_task(self._keep_current(), name="catalogue refresh"))

    async def stop(self) -> None:
        """Stop watching and close the registry. Idempotent."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if tasks:
            await self.registry.stop()

    async def refresh(self, names: Iterable[str] | None = None) -> None:
        """Look ``names`` up again (every service when ``None``) and tell ``on_change`` if
        what they offer changed. A registry that fails keeps the endpoints known last."""
        try:
            if names is None:
                names = {service.name for service in await self.registry.list_services()}
                gone: Endpoints = {name: {} for name in self.endpoints}
                found = gone | await self._look_up(names)
            else:
                found = await self._look_up(set(names))
        except Exception:
            logger.warning("cannot read the registry; keeping the endpoints known", exc_info=True)
            return
        current = {**self.endpoints, **found}
        current = {name: endpoints for name, endpoints in current.items() if endpoints}
        if current == self.endpoints:
            return
        self.endpoints = current
        if self.on_change is not None:
            try:
                await self.on_change()
            except Exception:
                logger.exception("a catalogue listener failed")

    async def _look_up(self, names: set[str]) -> Endpoints:
        records = await asyncio.gather(*(self.registry.get_service(name) for name in names))
        return {name: merged(found) for name, found in zip(names, records, strict=True)}

    async def _watch(self) -> None:
        while True:
            try:
                async with contextlib.aclosing(self.registry.watch()) as events:
                    async for event in events:
                        self._changed.add(event.service.name)
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("the registry watch broke; watching again", exc_info=True)
            await asyncio.sleep(1.0)

    async def _keep_current(self) -> None:
        while True:
            woken = False
            with contextlib.suppress(TimeoutError):
                woken = await asyncio.wait_for(self._wake.wait(), self.resync)
            if not woken:
                await self.refresh()
                continue
            await asyncio.sleep(self.settle)
            self._wake.clear()
            changed, self._changed = self._changed, set()
            await self.refresh(changed)


def merged(records: Iterable[ServiceRecord]) -> dict[str, Endpoint]:
    """The endpoints of the versions of a service that have live nodes; where versions differ
    on one endpoint, the newest version's."""
    live = [record for record in records if record.nodes]
    endpoints: dict[str, Endpoint] = {}
    for record in sorted(live, key=lambda r: _version_key(r.version), reverse=True):
        for endpoint in record.endpoints:
            endpoints.setdefault(endpoint.name, endpoint)
    return endpoints


def _version_key(version: str) -> tuple[tuple[int, str], ...]:
    """``1.10.0`` after ``1.9.2``: numbers compared as numbers, the rest as text."""
    return tuple(
        (int(part), "") if part.isdigit() else (-1, part) for part in re.split(r"[.+-]", version)
    )
