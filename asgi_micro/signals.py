"""Draining on SIGINT and SIGTERM, before the server's own handler stops the process.

A server (uvicorn) installs its handlers before the app's lifespan starts; ``ExitSignals``
puts itself in front of them. On the first signal the service drains (deregisters, lets peers
notice, waits for what is in flight) and then the server's handler runs; a second signal goes
straight through.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import threading
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

__all__ = ["ExitSignals"]

Handler = Callable[[int, FrameType | None], Any]


class ExitSignals:
    def __init__(self, drain: Callable[[], Awaitable[None]], running: Callable[[], bool]) -> None:
        self._drain = drain
        self._running = running
        self._installed = False
        self._draining: asyncio.Task[None] | None = None

    def install(self) -> None:
        """Take SIGINT and SIGTERM in front of the handlers in place; only from the main
        thread (signals are delivered there), and once."""
        if self._installed or threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous = signal.getsignal(signum)
            if callable(previous):
                signal.signal(signum, functools.partial(self._on_signal, loop, previous))
        self._installed = True

    def _on_signal(
        self,
        loop: asyncio.AbstractEventLoop,
        previous: Handler,
        signum: int,
        frame: FrameType | None,
    ) -> None:
        if self._draining is not None or not self._running() or loop.is_closed():
            previous(signum, frame)
            return
        loop.call_soon_threadsafe(self._begin, previous, signum)

    def _begin(self, previous: Handler, signum: int) -> None:
        async def drain_then_exit() -> None:
            try:
                await self._drain()
            finally:
                previous(signum, None)

        self._draining = asyncio.get_running_loop().create_task(drain_then_exit())
