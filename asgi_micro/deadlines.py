"""Deadlines of the calls a process serves, kept on one timer per event loop.

``asyncio.timeout`` makes a ``Timeout`` and arms a timer of the loop for every block it guards,
and cancels the timer when the block ends. A server guards every call that carries a deadline
(the client sends one on every call), almost all of which end long before it, so on a call of
a few tens of microseconds that is a visible share (``benchmarks/deadlines.py``). ``Deadlines``
keeps the calls' deadlines in a heap instead and arms the loop's timer for the earliest only;
a call that ends takes its deadline off the books (a dictionary delete). A deadline that
passes cancels its task as ``asyncio.timeout`` does, and ``expired`` tells the guarded block
that the cancellation was the deadline's.

    deadlines = Deadlines.of_running_loop()
    ticket = deadlines.start(when, task)      # when: loop.time() seconds
    try:
        ...
    except asyncio.CancelledError:
        if deadlines.expired(ticket) and task.uncancel() <= cancelling: raise TimeoutError
        raise
    finally:
        deadlines.finish(ticket)

``context.within_deadline`` is the one user.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import threading
from typing import Final

__all__ = ["Deadlines"]

_COMPACT_SLACK: Final = 256
"""Ended calls' entries the heap may hold beyond twice the running ones before it is rebuilt
(entries leave the heap only when they come to its top)."""


class Deadlines:
    """The deadlines of the calls running on one event loop (use it from that loop only)."""

    __slots__ = ("_expired", "_heap", "_running", "_tickets", "_timer", "_timer_at", "loop")

    _local: Final = threading.local()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._heap: list[tuple[float, int]] = []
        self._running: dict[int, asyncio.Task[object]] = {}
        self._expired: set[int] = set()
        self._tickets = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    @classmethod
    def of_running_loop(cls) -> Deadlines:
        """The running loop's (one per thread's loop; a thread that moves to another loop
        gets a new one, while calls started on the old keep theirs)."""
        loop = asyncio.get_running_loop()
        deadlines: Deadlines | None = getattr(cls._local, "deadlines", None)
        if deadlines is None or deadlines.loop is not loop:
            deadlines = cls._local.deadlines = cls(loop)
        return deadlines

    def start(self, when: float, task: asyncio.Task[object]) -> int:
        """Cancel ``task`` at ``when`` (``loop.time()`` seconds) unless ``finish`` comes first;
        a ticket for ``finish`` and ``expired``."""
        ticket = next(self._tickets)
        heap = self._heap
        heapq.heappush(heap, (when, ticket))
        self._running[ticket] = task
        if when < self._timer_at:
            self._arm(when)
        elif len(heap) > 2 * len(self._running) + _COMPACT_SLACK:
            self._compact()
        return ticket

    def finish(self, ticket: int) -> None:
        """The call ended: its deadline no longer applies."""
        if self._running.pop(ticket, None) is None:
            self._expired.discard(ticket)

    def expired(self, ticket: int) -> bool:
        """Whether the deadline passed and cancelled the call's task."""
        return ticket in self._expired

    def __len__(self) -> int:
        """Calls whose deadline is running."""
        return len(self._running)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        now = self.loop.time()
        heap, running = self._heap, self._running
        while heap and heap[0][0] <= now:
            _, ticket = heapq.heappop(heap)
            task = running.pop(ticket, None)
            if task is not None:
                self._expired.add(ticket)
                task.cancel()
        while heap and heap[0][1] not in running:  # ended calls on top: drop them
            heapq.heappop(heap)
        if heap:  # a loop timer may also fire a little early: this re-arms it
            self._arm(heap[0][0])

    def _compact(self) -> None:
        running = self._running
        self._heap = [entry for entry in self._heap if entry[1] in running]
        heapq.heapify(self._heap)
