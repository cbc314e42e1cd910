"""Which services changed in the registry, told to every open page (``Changes``).

One watch of the registry serves every listener: each collects the names of the services that
changed since it last looked, so a listener that is slow to send (a browser on a bad link) is
told of a burst of heartbeats once, with each name once, and holds no growing queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from ..registry import Registry

__all__ = ["Changes", "Listener"]

logger = logging.getLogger(__name__)


class Listener:
    """One page's view of the changes: the names of the services that changed."""

    def __init__(self, *, settle: float) -> None:
        self.settle = settle
        self.changed: set[str] = set()
        self.woken = asyncio.Event()

    def tell(self, name: str) -> None:
        self.changed.add(name)
        self.woken.set()

    async def next(self, timeout: float) -> set[str]:
        """The services that changed, once there is one and ``settle`` seconds have passed
        (so that a node's registration and its first heartbeat come as one change); an empty
        set when nothing changed for ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.woken.wait(), timeout)
        if not self.woken.is_set():
            return set()
        await asyncio.sleep(self.settle)
        self.woken.clear()
        changed, self.changed = self.changed, set()
        return changed


class Changes:
    """Watches ``registry`` from ``start`` to ``stop`` and tells every listener."""

    def __init__(self, registry: Registry, *, settle: float = 0.3) -> None:
        self.registry = registry
        self.settle = settle
        self._listeners: set[Listener] = set()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Watch the registry (it must be started). Idempotent."""
        if self._task is None:
            self._task = asyncio.create_task(self._watch(), name="dashboard watch")
            await asyncio.sleep(0)  # subscribed before the first page is rendered

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @contextlib.contextmanager
    def listen(self) -> Iterator[Listener]:
        listener = Listener(settle=self.settle)
        self._listeners.add(listener)
        try:
            yield listener
        finally:
            self._listeners.discard(listener)

    async def _watch(self) -> None:
        while True:
            try:
                async with contextlib.aclosing(self.registry.watch()) as events:
                    async for event in events:
                        for listener in self._listeners:
                            listener.tell(event.service.name)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("the registry watch broke; watching again", exc_info=True)
            await asyncio.sleep(1.0)
