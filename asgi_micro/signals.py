"""Draining on SIGINT and SIGTERM, before the server's own handler stops the process.

A server (uvicorn, or ``asgi_micro.group.ServiceGroup`` for several) installs its handlers
before the apps' lifespans start; each service's ``ExitSignals`` puts itself in front of the
handler in place, so with several services in one process their handlers form a chain in front
of the server's. On the first signal every service in the chain drains at once (deregisters,
lets peers notice, waits for what is in flight), and then the server's handler runs; a second
signal, with every service draining already, goes straight through to it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

__all__ = ["ExitSignals"]

logger = logging.getLogger(__name__)

Handler = Callable[[int, FrameType | None], Any]


class ExitSignals:
    def __init__(self, drain: Callable[[], Awaitable[None]], running: Callable[[], bool]) -> None:
        self._drain = drain
        self._running = running
        self._installed = False
        self._draining = False

    def install(self) -> None:
        """Take SIGINT and SIGTERM in front of the handlers in place; only from the main
        thread (signals are delivered there), and once."""
        if self._installed or threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous = signal.getsignal(signum)
            if callable(previous):
                signal.signal(signum, _InFront(self, loop, previous))
        self._installed = True

    def _due(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether a signal should make this service drain: it serves, in the loop running
        now, and is not draining yet."""
        return not self._draining and self._running() and loop.is_running()


class _InFront:
    """One service's handler of a signal, in front of ``previous`` (the server's handler, or
    another service's)."""

    __slots__ = ("loop", "previous", "signals")

    def __init__(
        self, signals: ExitSignals, loop: asyncio.AbstractEventLoop, previous: Handler
    ) -> None:
        self.signals = signals
        self.loop = loop
        self.previous = previous

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        # Every service in the chain, not only this one; all of them in the one loop that runs
        # in the main thread (handlers are installed from there only).
        due: list[ExitSignals] = []
        loop: asyncio.AbstractEventLoop | None = None
        handler: Handler = self
        while isinstance(handler, _InFront):
            if handler.signals._due(handler.loop):
                due.append(handler.signals)
                loop = handler.loop
            handler = handler.previous
        if loop is None:
            handler(signum, frame)
            return
        for signals in due:
            signals._draining = True  # now: a second signal before the loop runs goes through
        loop.call_soon_threadsafe(_drain_then_exit, due, handler, signum)


def _drain_then_exit(due: list[ExitSignals], server: Handler, signum: int) -> None:
    async def drain_then_exit() -> None:
        try:
            results = await asyncio.gather(
                *(signals._drain() for signals in due), return_exceptions=True
            )
            for result in results:
                if isinstance(result, Exception):
                    logger.error("draining failed", exc_info=result)
        finally:
            server(signum, None)

    task = asyncio.get_running_loop().create_task(drain_then_exit())
    _tasks.add(task)  # kept until done: the loop holds only a weak reference to a task
    task.add_done_callback(_tasks.discard)


_tasks: set[asyncio.Task[None]] = set()
