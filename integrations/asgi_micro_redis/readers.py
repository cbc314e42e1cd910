"""What runs a subscription of the Redis broker: a reader per subscription, on a connection of
its own (it blocks in ``XREADGROUP``/``XREAD``), fetching no more entries than its subscription
has free slots and handing each over as a delivery; and the broadcast reader.

A broadcast reader (``BroadcastReader``) reads the stream from where it stood when it started
(``XREAD``), with no state on the server, and keeps its nacked events in memory: it is as
ephemeral as the subscription. A queue group's reader is in ``groups``. A reader that must wake
before its blocking read ends (a nacked event comes due) is unblocked with ``CLIENT UNBLOCK``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError, ResponseError

from asgi_micro.broker import Delivery, Event, Subscription

if TYPE_CHECKING:
    from .broker import RedisBroker

__all__ = ["BODY", "BroadcastReader", "Reader", "decode", "finish"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

BODY: Final = b":body"
"""The stream field of an event's body; each header is a field under its own name (no header
name starts with ``:``)."""

_BACKOFF: Final = ExponentialWithJitterBackoff(cap=5.0, base=0.1)
"""Between reads that failed after the client's own retries (Redis is down for longer)."""


def decode(topic: str, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int) -> Event:
    """The event a stream entry holds."""
    body = fields.get(BODY, b"")
    headers = {
        name.decode(errors="replace"): value.decode(errors="replace")
        for name, value in fields.items()
        if name != BODY
    }
    event_id = headers.get("ce-id") or entry_id.decode()
    return Event(topic, event_id, headers, body, max(deliveries, 1))


class Reader(ABC):
    """Reads a stream for one subscription, in a task, on a connection of its own."""

    def __init__(self, broker: RedisBroker, subscription: Subscription) -> None:
        self.broker = broker
        self.subscription = subscription
        self.key = broker.key(subscription.topic)
        self.block = broker.block
        self._connection: Redis | None = None
        self._client_id: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._running = 0  # deliveries started and not finished, each holding a slot
        self._blocked_until: float | None = None  # when the blocking read under way ends
        self._timer: asyncio.TimerHandle | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._idle = False  # waiting for a slot or to try again, not for Redis

    async def start(self) -> None:
        """Make what the reader needs on the server, then start reading."""
        await self.prepare()
        # A blocking read holds its connection: the reader has one of its own, from the
        # broker's pool, whose id ``CLIENT UNBLOCK`` needs (learnt again on each reconnect).
        connection = Redis(
            connection_pool=self.broker.redis.connection_pool, single_connection_client=True
        )
        await connection.initialize()
        self._connection = connection
        assert connection.connection is not None
        connection.connection.register_connect_callback(self._connected)  # type: ignore[no-untyped-call]
        # A read that waits on the server longer than the socket timeout (redis-py's default is
        # 5 s) would time out in the client, and its retry wait as long again.
        socket_timeout = connection.connection.socket_timeout
        if socket_timeout:
            self.block = min(self.block, socket_timeout / 2)
        self._client_id = int(await connection.client_id())
        self._task = asyncio.create_task(self._run(), name=f"redis reader {self.key}")

    async def _connected(self, connection: AbstractConnection) -> None:
        await connection.send_command("CLIENT", "ID")
        self._client_id = int(await connection.read_response())

    async def stop(self) -> None:
        """Stop reading, then wait for the deliveries running now."""
        self._stopping = True
        task = self._task
        if task is not None:
            # A task cancelled while it waits for a reply may lose the cancellation in
            # redis-py (and the reply, with what it delivered): a read under way is cut short
            # on the server instead, and the reader returns by itself.
            if self._idle:
                task.cancel()
            else:
                self._unblock()
            await finish(task, patience=self.block + 1.0)
        if self._timer is not None:
            self._timer.cancel()
        await self.subscription.drain()
        try:
            if task is not None:
                await self.leave()
        except RedisError:
            logger.warning("could not leave %s cleanly", self.key, exc_info=True)
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._connection is not None:
            await self._connection.aclose()

    async def prepare(self) -> None:  # noqa: B027 - optional hook
        """Make what the reader needs on the server before it is in place."""

    async def leave(self) -> None:  # noqa: B027
        """Tidy up on the server once the last delivery is done."""

    @abstractmethod
    async def fetch(self, count: int) -> list[Delivery]:
        """Up to ``count`` deliveries; waits (a blocking read) when none is ready."""

    async def recover(self, error: ResponseError) -> bool:
        """Mend what ``error`` says is missing on the server; whether it did."""
        return False

    async def _run(self) -> None:
        subscription = self.subscription
        failures = 0
        while not self._stopping:
            taken = await self._between(self._take())
            if self._stopping:
                for _ in range(taken):
                    subscription.release()
                return
            try:
                deliveries = await self.fetch(taken)
            except Exception as exc:
                for _ in range(taken):
                    subscription.release()
                failures += 1
                # Redis down for longer than the client's own retries, or a defect: keep
                # reading, slower and slower.
                logger.warning(
                    "reading %s failed (%d in a row): %s: %s",
                    self.key,
                    failures,
                    type(exc).__name__,
                    exc,
                    exc_info=not isinstance(exc, RedisError),
                )
                if isinstance(exc, ResponseError):
                    with contextlib.suppress(RedisError):
                        if await self.recover(exc) and failures == 1:
                            continue  # at once, the first time
                await self._between(asyncio.sleep(_BACKOFF.compute(failures)))
                continue
            except BaseException:
                for _ in range(taken):
                    subscription.release()
                raise
            failures = 0
            # Even when stopping: what was fetched is handled (stop waits for it).
            for delivery in deliveries:
                self._start(delivery)
            for _ in range(taken - len(deliveries)):
                subscription.release()

    async def _between(self, waiting: Awaitable[T]) -> T:
        """Await ``waiting``, which sends no command: ``stop`` may cancel it."""
        self._idle = True
        try:
            return await waiting
        finally:
            self._idle = False

    async def _take(self) -> int:
        """Wait for a free slot, then take every other free one (each without waiting)."""
        subscription = self.subscription
        await subscription.acquire()
        taken = 1
        while taken + self._running < subscription.concurrency:
            await subscription.acquire()
            taken += 1
        return taken

    def _start(self, delivery: Delivery) -> None:
        task = self.subscription.start(delivery)
        self._running += 1
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running -= 1

    async def blocking(self, read: Callable[[int], Awaitable[T]], until: float) -> T:
        """``read(block_ms)``, a read that blocks until ``until`` (``time.monotonic()``) at most."""
        now = time.monotonic()
        timeout = 0.001 if self._stopping else min(self.block, max(until - now, 0.001))
        self._blocked_until = now + timeout
        try:
            return await read(max(1, int(timeout * 1000)))
        finally:
            self._blocked_until = None

    def due_at(self, at: float) -> None:
        """Something becomes ready at ``at``: unblock the read under way if it would end later
        (a read not yet under way bounds its own wait by what is due)."""
        until = self._blocked_until
        if until is None or until <= at or self._task is None or self._task.done():
            return
        timer = self._timer
        if timer is not None and not timer.cancelled() and timer.when() <= at:
            return
        if timer is not None:
            timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(loop.time() + max(at - time.monotonic(), 0.0), self._unblock)

    def _unblock(self) -> None:
        self._timer = None
        if self._blocked_until is not None:
            self.spawn(self._send_unblock())

    async def _send_unblock(self) -> None:
        # The read may not have reached the server yet: try again while it is still under way.
        for _ in range(5):
            client_id = self._client_id
            if self._blocked_until is None or client_id is None:
                return
            if await self.broker.redis.client_unblock(client_id):
                return
            await asyncio.sleep(0.01)

    def spawn(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await work
            except RedisError:
                logger.debug("redis reader %s: background step failed", self.key, exc_info=True)

        task = asyncio.create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @property
    def reader(self) -> Redis:
        assert self._connection is not None
        return self._connection


class BroadcastReader(Reader):
    """A broadcast subscription: reads the stream from where it stood when it was made."""

    def __init__(self, broker: RedisBroker, subscription: Subscription) -> None:
        super().__init__(broker, subscription)
        self._last: bytes = b"0-0"
        self._again: list[tuple[float, int, Event]] = []  # nacked, by when they are due
        self._order = itertools.count()

    async def prepare(self) -> None:
        last: Any = await self.broker.redis.xrevrange(self.key, "+", "-", count=1)
        if last:
            self._last = last[0][0]

    async def fetch(self, count: int) -> list[Delivery]:
        out: list[Delivery] = []
        now = time.monotonic()
        again = self._again
        while again and len(out) < count and again[0][0] <= now:
            out.append(_BroadcastDelivery(heapq.heappop(again)[2], self))
        if len(out) < count:
            redis = self.reader
            want = count - len(out)
            reply: Any
            if out:
                reply = await redis.xread({self.key: self._last}, count=want)
            else:
                until = again[0][0] if again else math.inf
                reply = await self.blocking(
                    lambda ms: redis.xread({self.key: self._last}, count=want, block=ms), until
                )
            topic = self.subscription.topic
            for _, entries in reply or ():
                for entry_id, fields in entries:
                    self._last = entry_id
                    out.append(_BroadcastDelivery(decode(topic, entry_id, fields, 1), self))
        return out

    def again(self, event: Event, delay: float) -> None:
        event = Event(event.topic, event.id, event.headers, event.body, event.deliveries + 1)
        at = time.monotonic() + max(delay, 0.0)
        heapq.heappush(self._again, (at, next(self._order), event))
        self.due_at(at)


class _BroadcastDelivery(Delivery):
    __slots__ = ("_reader",)

    def __init__(self, event: Event, reader: BroadcastReader) -> None:
        super().__init__(event)
        self._reader = reader

    async def ack(self) -> None:
        pass  # nothing on the server: the reader has moved past it

    async def nack(self, delay: float) -> None:
        self._reader.again(self.event, delay)


async def finish(task: asyncio.Task[Any], *, patience: float) -> None:
    """Wait up to ``patience`` seconds for ``task`` to end, then cancel it until it does (a
    cancellation can be lost in redis-py: redis/redis-py#2028)."""
    await asyncio.wait({task}, timeout=patience)
    for _ in range(20):
        if task.done():
            break
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
    if not task.done():
        logger.error("%s did not stop", task.get_name())
    elif not task.cancelled() and task.exception() is not None:
        logger.error("%s failed", task.get_name(), exc_info=task.exception())
