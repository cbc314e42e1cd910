"""A queue group's reader: one consumer of the group, per subscription.

It takes, in this order: its own nacked entries whose delay has passed, entries of any member
idle for longer than the reclaim time (``XAUTOCLAIM``, scanned every quarter of it: what a
killed member had taken, or nacked and never took back), then new entries (``XREADGROUP >``).
While a handler runs, its entry is touched every third of the reclaim time so that no other
member takes it over. A member that leaves gives back what never reached its handler.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import os
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any, Final

from redis.exceptions import RedisError, ResponseError

from asgi_micro.broker import Delivery, Event, Subscription

from . import scripts
from .readers import Reader, decode, finish

if TYPE_CHECKING:
    from .broker import RedisBroker

__all__ = ["GroupReader", "consumer_name"]

logger = logging.getLogger(__name__)

_DUE_MARGIN: Final = 0.002  # the server's idle clock against ours, in seconds


def consumer_name(source: str) -> str:
    """A consumer name no other subscription has, saying whose it is."""
    return f"{source or 'micro'}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"


class GroupReader(Reader):
    """A member of a queue group: one consumer of the group ``subscription.queue``."""

    def __init__(self, broker: RedisBroker, subscription: Subscription) -> None:
        super().__init__(broker, subscription)
        assert subscription.queue is not None
        self.group = subscription.queue
        self.consumer = consumer_name(broker.source)
        self.reclaim_ms = max(1, int(broker.reclaim_idle * 1000))
        self._scan_every = broker.reclaim_idle / 4
        self._next_scan = 0.0  # at once: what the group's dead members left
        self._cursor: bytes | str = "0-0"
        self._cleaned = time.monotonic()
        self._nacked: dict[bytes, float] = {}  # entry id -> when it is due again
        self._due: list[tuple[float, bytes]] = []  # the same, as a heap (stale items skipped)
        self._handling: dict[bytes, float] = {}  # entry id -> when its handler started
        self._unsettled: set[bytes] = set()  # handled, but the ack or nack did not reach Redis
        self._keeper: asyncio.Task[None] | None = None
        redis = broker.redis
        self._claim = redis.register_script(scripts.CLAIM)
        self._touch = redis.register_script(scripts.TOUCH)
        self._release = redis.register_script(scripts.RELEASE)
        self._clean = redis.register_script(scripts.CLEAN)

    async def prepare(self) -> None:
        # At "$": the group gets what is published from now on, not the stream's history.
        await self._create_group("$")

    async def _create_group(self, start: str) -> None:
        try:
            await self.broker.redis.xgroup_create(self.key, self.group, id=start, mkstream=True)
        except ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise

    async def recover(self, error: ResponseError) -> bool:
        message = str(error)
        if "NOGROUP" not in message and not message.startswith("UNBLOCKED"):
            return False
        # The stream or the group was deleted (a flush, a restart without persistence): at "0",
        # so that what was published since is handled, at the risk of repeats.
        await self._create_group("0")
        logger.warning("group %s of %s was gone: made again", self.group, self.key)
        return True

    async def start(self) -> None:
        await super().start()
        self._keeper = asyncio.create_task(self._keep(), name=f"redis keeper {self.key}")

    async def fetch(self, count: int) -> list[Delivery]:
        out: list[Delivery] = []
        now = time.monotonic()
        due = self._take_due(now, count)
        if due:
            out += await self._claimed("ids", *due)
        if len(out) < count and now >= self._next_scan:
            out += await self._scan(count - len(out))
        if len(out) < count:
            redis = self.reader
            streams: dict[Any, Any] = {self.key: ">"}
            want = count - len(out)
            reply: Any
            if out:
                reply = await redis.xreadgroup(self.group, self.consumer, streams, count=want)
            else:
                until = min(self._next_scan, self._due[0][0] if self._due else math.inf)
                reply = await self.blocking(
                    lambda ms: redis.xreadgroup(
                        self.group, self.consumer, streams, count=want, block=ms
                    ),
                    until,
                )
            for _, entries in reply or ():
                out += [self._delivery(entry_id, fields, 1) for entry_id, fields in entries]
        return out

    def _take_due(self, now: float, count: int) -> list[bytes]:
        due: list[bytes] = []
        heap = self._due
        while heap and len(due) < count and heap[0][0] <= now:
            at, entry_id = heapq.heappop(heap)
            if self._nacked.get(entry_id) == at:
                del self._nacked[entry_id]
                due.append(entry_id)
        return due

    async def _scan(self, count: int) -> list[Delivery]:
        deliveries = await self._claimed("scan", self._cursor, count)
        if self._cursor in ("0-0", b"0-0"):
            self._next_scan = time.monotonic() + self._scan_every
            await self._clean_consumers()
        return deliveries

    async def _claimed(self, mode: str, *args: Any) -> list[Delivery]:
        result: Any = await self._claim(
            keys=[self.key], args=[self.group, self.consumer, self.reclaim_ms, mode, *args]
        )
        cursor, entries, trimmed, counts = result
        if mode == "scan":
            self._cursor = cursor
        if trimmed:
            logger.error(
                "%d events on %s were trimmed (maxlen) before group %s handled them: %s",
                len(trimmed),
                self.key,
                self.group,
                b", ".join(trimmed[:10]).decode(),
            )
        out: list[Delivery] = []
        for entry, deliveries in zip(entries, counts, strict=True):
            if not entry:
                continue
            entry_id, flat = entry
            self._nacked.pop(entry_id, None)  # a scan found it first
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            out.append(self._delivery(entry_id, fields, int(deliveries)))
        return out

    async def _clean_consumers(self) -> None:
        now = time.monotonic()
        if now - self._cleaned < self.broker.reclaim_idle:
            return
        self._cleaned = now
        stale_ms = 2 * self.reclaim_ms + int(self.block * 1000)
        removed = await self._clean(keys=[self.key], args=[self.group, self.consumer, stale_ms])
        if removed:
            logger.info("removed %d stale consumers from %s/%s", removed, self.key, self.group)

    def _delivery(self, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int) -> Delivery:
        self._handling[entry_id] = time.monotonic()
        event = decode(self.subscription.topic, entry_id, fields, deliveries)
        return _GroupDelivery(event, self, entry_id)

    async def ack(self, entry_id: bytes) -> None:
        self._handling.pop(entry_id, None)
        try:
            await self.broker.redis.xack(self.key, self.group, entry_id)
        except BaseException:
            self._unsettled.add(entry_id)
            raise
        self._unsettled.discard(entry_id)

    async def nack(self, entry_id: bytes, delay: float) -> None:
        # It stays pending, with an idle time that makes it due for reclaiming once the delay
        # has passed (by this member if it is still here, else by any other); the claim counts
        # the next delivery. A delay is at most the reclaim time.
        self._handling.pop(entry_id, None)
        delay_ms = math.ceil(min(max(delay, 0.0), self.broker.reclaim_idle) * 1000)
        try:
            owned = await self._touch(
                keys=[self.key],
                args=[self.group, self.consumer, max(self.reclaim_ms - delay_ms, 0), entry_id],
            )
        except BaseException:
            self._unsettled.add(entry_id)
            raise
        self._unsettled.discard(entry_id)
        if owned:
            at = time.monotonic() + delay_ms / 1000 + _DUE_MARGIN
            self._nacked[entry_id] = at
            heapq.heappush(self._due, (at, entry_id))
            self.due_at(at)

    async def _keep(self) -> None:
        """Touch the entries whose handlers run long, so that no other member reclaims them."""
        period = self.broker.reclaim_idle / 3
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            long_running = [i for i, started in self._handling.items() if now - started >= period]
            if not long_running:
                continue
            try:
                await self._touch(
                    keys=[self.key], args=[self.group, self.consumer, 0, *long_running]
                )
            except RedisError:
                logger.warning("could not keep %d events of %s", len(long_running), self.key)

    async def leave(self) -> None:
        if self._keeper is not None:  # kept until the last handler is done
            self._keeper.cancel()
            await finish(self._keeper, patience=0.0)
        nacked = list(self._nacked)
        released = await self._release(
            keys=[self.key],
            args=[
                self.group,
                self.consumer,
                self.reclaim_ms,
                len(nacked),
                *nacked,
                *self._unsettled,
            ],
        )
        if released:
            logger.info("%s left %d events of %s to the group", self.consumer, released, self.key)


class _GroupDelivery(Delivery):
    __slots__ = ("_entry_id", "_reader")

    def __init__(self, event: Event, reader: GroupReader, entry_id: bytes) -> None:
        super().__init__(event)
        self._reader = reader
        self._entry_id = entry_id

    async def ack(self) -> None:
        await self._reader.ack(self._entry_id)

    async def nack(self, delay: float) -> None:
        await self._reader.nack(self._entry_id, delay)
