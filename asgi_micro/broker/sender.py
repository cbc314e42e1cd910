"""The embedded broker's sender: delivers each copy the outbox holds until a subscriber took it.

A copy for a broadcast subscription goes to its node; one for a queue group to a member of
the group chosen when it is sent (the least busy, another than the one that failed it last
when there is another). It is deleted from the outbox when the node answers that the handler
succeeded; a handler that failed (``503`` with a delay) has it sent again after that delay as
the next delivery; a node that cannot be reached has it sent again after a backoff, elsewhere
when the group has another member. No node gets more of a subscription's events at once than
the concurrency it advertises.

A broadcast copy is dropped when its node no longer has the subscription (it unsubscribed,
stopped or expired from the registry): broadcast subscriptions are ephemeral. A copy for a
queue group waits while the group has no member, and goes out as soon as one registers. A
copy still undelivered ``max_age`` seconds after it was published is given up: for a queue
group it is dead-lettered to ``<topic>.dead`` (a ``503`` in ``micro-error``), a broadcast copy
is dropped; both with a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any
from urllib.parse import quote

from .. import errors
from ..client.http import HTTPTransport
from .base import DEAD_SUFFIX, DELIVERIES_HEADER, ERROR_HEADER, Redelivery
from .directory import Directory, Member
from .inbox import DELIVERY_HEADER, INBOX_PREFIX, NACK_HEADER
from .outbox import Outbox, Pending

__all__ = ["Sender"]

logger = logging.getLogger(__name__)

DeadLetter = Callable[[str, bytes, dict[str, str]], Awaitable[None]]
_Key = tuple[str, str, str | None]  # node id, topic, queue
_REFUSED_FOR = 5.0  # seconds a member that said it takes no more of a group is passed over
_BATCH = 64
_IDLE_WAIT = 5.0
_FORGET_OVER = 10_000


class Sender:
    def __init__(
        self,
        outbox: Outbox,
        directory: Directory,
        transport: HTTPTransport,
        *,
        dead_letter: DeadLetter,
        max_age: float,
        timeout: float,
        max_in_flight: int,
        backoff: Redelivery,
    ) -> None:
        self.outbox = outbox
        self.directory = directory
        self.transport = transport
        self.dead_letter = dead_letter
        self.max_age = max_age
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.backoff = backoff
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._busy: dict[_Key, int] = {}
        self._down: dict[str, tuple[float, int]] = {}  # node id -> (until, failures in a row)
        self._refused: dict[_Key, float] = {}
        self._avoid: dict[int, str] = {}  # delivery id -> the member that failed it last
        self._chores: set[asyncio.Task[None]] = set()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="asgi-micro broker sender")

    def wake(self) -> None:
        self._idle.clear()
        self._wakeup.set()

    async def stop(self, *, flush: float) -> None:
        """Send what is due now for at most ``flush`` seconds, then stop; what is left stays
        in the outbox for the next start."""
        task, self._task = self._task, None
        if task is None:
            return
        if flush > 0:
            self.wake()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(flush):
                    await self._idle.wait()
        task.cancel()
        running = [*self._inflight.values(), *self._chores]
        for chore in running:
            chore.cancel()
        await asyncio.gather(task, *running, return_exceptions=True)
        self._inflight.clear()
        self._busy.clear()

    def joined(self, topic: str, queue: str | None) -> None:
        """A member joined queue group ``queue`` on ``topic``: what waits for it is due now."""
        if queue is None:
            return
        for key in [key for key in self._refused if key[1:] == (topic, queue)]:
            del self._refused[key]
        self._chore(self._wake_group(topic, queue))

    async def _wake_group(self, topic: str, queue: str) -> None:
        await self.outbox.wake(topic, queue, time.time())
        self.wake()

    def _chore(self, coroutine: Coroutine[Any, Any, None]) -> None:
        chore = asyncio.create_task(coroutine)
        self._chores.add(chore)
        chore.add_done_callback(self._chores.discard)

    # -- the loop -------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                timeout = await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("broker: sending from the outbox failed; trying again")
                timeout = 1.0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()

    async def _step(self) -> float:
        """Dispatch what is due; how long to wait for something to do, unless woken."""
        if await self._pass():
            return 1.0  # a delivery that ends frees a slot, and wakes the loop
        at = await self.outbox.next_due(exclude=list(self._inflight))
        now = time.time()
        if not self._inflight and (at is None or at > now):
            self._idle.set()  # nothing under way, nothing due: what stop's flush waits for
        return _IDLE_WAIT if at is None else min(_IDLE_WAIT, max(0.0, at - now))

    async def _pass(self) -> bool:
        """Dispatch what is due; whether some of it must wait for a free slot."""
        while True:
            self._wakeup.clear()
            free = self.max_in_flight - len(self._inflight)
            if free <= 0:
                return True
            limit = max(free, _BATCH)
            rows = await self.outbox.due(time.time(), exclude=list(self._inflight), limit=limit)
            busy = False
            for row in rows:
                if len(self._inflight) >= self.max_in_flight:
                    return True
                if row.id not in self._inflight and not self._dispatch(row):
                    busy = True
            if busy or len(rows) < limit:
                return busy

    def _dispatch(self, row: Pending) -> bool:
        """Start what ``row`` needs now; ``False`` when every node it may go to is full."""
        now = time.time()
        if now - row.created > self.max_age:
            self._spawn(row, self._expire(row))
            return True
        if row.node is not None:
            member = self.directory.members.get(row.node)
            subscription = member.takes(row.topic, None) if member is not None else None
            if member is None or subscription is None:
                logger.debug("broker: %s unsubscribed from %s; copy dropped", row.node, row.topic)
                self._spawn(row, self._settle(row, done=True))
                return True
            if self._is_down(member.id, now):
                self._spawn(row, self._later(row, failed=None))
                return True
            key: _Key = (member.id, row.topic, None)
            if self._busy.get(key, 0) >= subscription.concurrency:
                return False
            self._send(row, member, key)
            return True
        assert row.queue is not None
        usable = [
            member
            for member in self.directory.group(row.topic, row.queue)
            if not self._is_down(member.id, now)
            and self._refused.get((member.id, row.topic, row.queue), 0.0) <= now
        ]
        avoid = self._avoid.get(row.id)
        if len(usable) > 1:
            usable = [member for member in usable if member.id != avoid] or usable
        if not usable:
            self._spawn(row, self._later(row, failed=None))
            return True
        choices = []
        for member in usable:
            subscription = member.takes(row.topic, row.queue)
            assert subscription is not None
            busy = self._busy.get((member.id, row.topic, row.queue), 0)
            if busy < subscription.concurrency:
                choices.append((busy / subscription.concurrency, random.random(), member))
        if not choices:
            return False
        chosen = min(choices, key=lambda choice: choice[:2])[2]
        self._send(row, chosen, (chosen.id, row.topic, row.queue))
        return True

    def _spawn(self, row: Pending, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._inflight[row.id] = task

        def finished(_: asyncio.Task[None]) -> None:
            if self._inflight.get(row.id) is task:
                del self._inflight[row.id]
            self.wake()

        task.add_done_callback(finished)

    def _send(self, row: Pending, member: Member, key: _Key) -> None:
        self._busy[key] = self._busy.get(key, 0) + 1
        self._spawn(row, self._attempt(row, member, key))

    # -- one attempt ----------------------------------------------------------------------------

    async def _attempt(self, row: Pending, member: Member, key: _Key) -> None:
        try:
            kind, delay = await self._post(row, member)
        finally:
            left = self._busy.get(key, 1) - 1
            if left > 0:
                self._busy[key] = left
            else:
                self._busy.pop(key, None)
        if kind == "done":
            self._down.pop(member.id, None)
            await self._settle(row, done=True)
        elif kind == "nack":
            self._down.pop(member.id, None)
            row.attempts += 1
            row.failures = 0
            await self._settle(row, at=time.time() + delay)
        elif kind == "gone":
            if row.queue is None:
                await self._settle(row, done=True)
            else:
                self._refused[key] = time.time() + _REFUSED_FOR
                self._avoid[row.id] = member.id
                await self._settle(row, at=time.time())
        elif kind == "rejected":
            await self._settle(row, done=True)
        else:  # "lost": it may have been delivered; "unreachable": it was not
            if kind == "lost":
                row.attempts += 1
            else:
                self._mark_down(member.id)
            await self._later(row, failed=member.id)

    async def _post(self, row: Pending, member: Member) -> tuple[str, float]:
        """Send ``row`` to ``member``: ``(kind, delay)`` of what came of it."""
        headers: list[tuple[bytes, bytes]] = [
            (name.encode("latin-1"), value.encode()) for name, value in row.headers.items()
        ]
        headers.append((DELIVERY_HEADER.encode(), str(row.attempts + 1).encode()))
        target = f"{INBOX_PREFIX}{row.topic}?node={quote(member.id, safe='')}"
        if row.queue is not None:
            target += f"&queue={quote(row.queue, safe='')}"
        try:
            response = await self.transport.request(
                member.host,
                member.port,
                "POST",
                target,
                headers=headers,
                body=row.body,
                timeout=self.timeout,
            )
        except errors.ConnectionFailed:
            return "unreachable", 0.0
        except (errors.ConnectionLost, errors.Timeout) as exc:
            logger.info("broker: event %s to %s: %s", row.headers.get("ce-id"), member.id, exc)
            return "lost", 0.0
        except (errors.BadRequest, UnicodeError) as exc:
            logger.error("broker: event %s cannot be sent: %s", row.headers.get("ce-id"), exc)
            return "rejected", 0.0
        status = response.status
        if 200 <= status < 300:
            return "done", 0.0
        nack = response.header(NACK_HEADER.encode())
        if status == 503 and nack is not None:
            try:
                return "nack", max(float(nack), 0.0)
            except ValueError:
                return "nack", 1.0
        if status in (404, 405, 421):
            return "gone", 0.0
        if status in (503, 429):  # refused before a handler ran (the server's connection cap)
            return "unreachable", 0.0
        if 400 <= status < 500 and status != 408:
            logger.error(
                "broker: %s refused event %s on %s for good (%d): %s",
                member.id,
                row.headers.get("ce-id"),
                row.topic,
                status,
                response.body[:500].decode(errors="replace"),
            )
            return "rejected", 0.0
        return "lost", 0.0

    # -- outcomes -------------------------------------------------------------------------------

    async def _later(self, row: Pending, *, failed: str | None) -> None:
        """Try ``row`` again: it reached no subscriber (``failed`` names the member that
        could not take it). At once when another member of its group may take it, else
        after a backoff."""
        row.failures += 1
        at = time.time() + self.backoff.delay(row.failures)
        if failed is not None:
            if len(self._avoid) > _FORGET_OVER:
                self._avoid.clear()  # a hint only: at worst a retry goes to the same member
            self._avoid[row.id] = failed
            if row.queue is not None and self._elsewhere(row, failed):
                at = time.time()
        await self._settle(row, at=at)

    def _elsewhere(self, row: Pending, failed: str) -> bool:
        """Whether a member of ``row``'s group but ``failed`` may take it now."""
        assert row.queue is not None
        now = time.time()
        return any(
            member.id != failed
            and not self._is_down(member.id, now)
            and self._refused.get((member.id, row.topic, row.queue), 0.0) <= now
            for member in self.directory.group(row.topic, row.queue)
        )

    async def _expire(self, row: Pending) -> None:
        age = time.time() - row.created
        if row.queue is None or row.topic.endswith(DEAD_SUFFIX):
            logger.warning(
                "broker: event %s on %s dropped: undelivered to %s after %.0fs",
                row.headers.get("ce-id"),
                row.topic,
                row.node or f"queue group {row.queue}",
                age,
            )
            await self._settle(row, done=True)
            return
        error = errors.ServiceUnavailable(
            f"no member of queue group {row.queue} took it within {self.max_age:g}s"
        )
        headers = dict(row.headers)
        headers[ERROR_HEADER] = error.to_json().decode()
        headers[DELIVERIES_HEADER] = str(row.attempts)
        logger.warning(
            "broker: event %s on %s dead-lettered to %s%s: %s",
            row.headers.get("ce-id"),
            row.topic,
            row.topic,
            DEAD_SUFFIX,
            error.detail,
        )
        try:
            await self.dead_letter(row.topic + DEAD_SUFFIX, row.body, headers)
        except Exception:
            logger.exception("broker: dead-lettering event %s failed", row.headers.get("ce-id"))
            await self._settle(row, at=time.time() + 60.0)
            return
        await self._settle(row, done=True)

    async def _settle(self, row: Pending, *, done: bool = False, at: float = 0.0) -> None:
        try:
            if done:
                self._avoid.pop(row.id, None)
                await self.outbox.settle(done=[row])
            else:
                await self.outbox.settle(again=[(row, at)])
        except Exception:
            # It stays as it was and comes up again: at worst delivered twice (dedup drops it).
            logger.warning("broker: could not record delivery %d", row.id, exc_info=True)

    def _is_down(self, node_id: str, now: float) -> bool:
        down = self._down.get(node_id)
        return down is not None and down[0] > now

    def _mark_down(self, node_id: str) -> None:
        now = time.time()
        if len(self._down) > _FORGET_OVER:  # nodes long gone
            self._down = {node: down for node, down in self._down.items() if down[0] > now}
        _, failures = self._down.get(node_id, (0.0, 0))
        failures += 1
        self._down[node_id] = (now + min(10.0, 0.2 * 2 ** (failures - 1)), failures)
