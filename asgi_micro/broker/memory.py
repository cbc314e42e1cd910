"""``memory://``: a broker inside the process, with the semantics of the others.

Brokers made from the same URL share one hub (``memory://`` the default one, ``memory://name``
another), so the services of a test, each with its own broker, reach each other. Broadcast
subscriptions each get their own copy; a queue group is one queue its members take from, kept
once made, so that what is published while the group has no member waits for the next one.
A nacked event comes back after its delay with its delivery count raised. Nothing is durable:
the hub lives as long as the process.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Self
from urllib.parse import urlsplit

from .base import Broker, Delivery, Event, Subscription, check_topic

if TYPE_CHECKING:
    from ..plugins import Parts

__all__ = ["MemoryBroker"]


@dataclass(slots=True)
class _Item:
    topic: str
    body: bytes
    headers: dict[str, str]
    deliveries: int = 1


@dataclass(slots=True, eq=False)
class _Queue:
    """Events waiting for a subscription (broadcast) or for any member of a group."""

    items: asyncio.Queue[_Item] = field(default_factory=asyncio.Queue)
    members: int = 0


@dataclass(slots=True, eq=False, weakref_slot=True)
class _Hub:
    broadcast: dict[str, list[_Queue]] = field(default_factory=dict)
    groups: dict[tuple[str, str], _Queue] = field(default_factory=dict)


_HUBS: weakref.WeakValueDictionary[str, _Hub] = weakref.WeakValueDictionary()


class _MemoryDelivery(Delivery):
    __slots__ = ("_item", "_queue")

    def __init__(self, item: _Item, queue: _Queue) -> None:
        super().__init__(
            Event(
                item.topic,
                item.headers.get("ce-id", ""),
                dict(item.headers),
                item.body,
                item.deliveries,
            )
        )
        self._item = item
        self._queue = queue

    async def ack(self) -> None:
        pass  # taken off the queue when delivered

    async def nack(self, delay: float) -> None:
        item = self._item
        again = _Item(item.topic, item.body, item.headers, item.deliveries + 1)
        loop = asyncio.get_running_loop()
        loop.call_later(max(delay, 0.0), self._queue.items.put_nowait, again)


class MemoryBroker(Broker):
    def __init__(self, url: str = "memory://", *, source: str = "") -> None:
        self.url = url
        self.source = source
        parts = urlsplit(url)
        name = parts.netloc + parts.path
        hub = _HUBS.get(name)
        if hub is None:
            hub = _HUBS[name] = _Hub()
        self._hub = hub  # held here: the hub lives while a broker on it does
        self._pumps: dict[
            Subscription, tuple[list[asyncio.Task[None]], _Queue, set[asyncio.Task[None]]]
        ] = {}

    @classmethod
    def from_url(cls, url: str, *, parts: Parts | None = None) -> Self:
        return cls(url, source=parts.service if parts is not None else "")

    async def stop(self) -> None:
        for subscription in list(self._pumps):
            await self.unsubscribe(subscription)

    async def publish_raw(self, topic: str, body: bytes, headers: Mapping[str, str]) -> None:
        check_topic(topic)
        hub = self._hub
        frozen = dict(headers)
        for queue in hub.broadcast.get(topic, ()):
            queue.items.put_nowait(_Item(topic, body, frozen))
        for (group_topic, _), queue in hub.groups.items():
            if group_topic == topic:
                queue.items.put_nowait(_Item(topic, body, frozen))

    async def attach(self, subscription: Subscription) -> None:
        hub = self._hub
        if subscription.queue is None:
            queue = _Queue()
            hub.broadcast.setdefault(subscription.topic, []).append(queue)
        else:
            key = (subscription.topic, subscription.queue)
            queue = hub.groups.get(key) or hub.groups.setdefault(key, _Queue())
        queue.members += 1
        # As many workers as the subscription may handle events at once: each takes an event
        # only when it is free, which is the backpressure, and no event costs a task.
        busy: set[asyncio.Task[None]] = set()
        workers = [
            asyncio.create_task(self._work(subscription, queue, busy))
            for _ in range(subscription.concurrency)
        ]
        self._pumps[subscription] = (workers, queue, busy)

    async def _work(
        self, subscription: Subscription, queue: _Queue, busy: set[asyncio.Task[None]]
    ) -> None:
        items = queue.items
        me = asyncio.current_task()
        assert me is not None
        while subscription.active:
            item = await items.get()
            busy.add(me)
            try:
                await subscription.deliver(_MemoryDelivery(item, queue))
            finally:
                busy.discard(me)

    async def unsubscribe(self, subscription: Subscription) -> None:
        found = self._pumps.pop(subscription, None)
        if found is None:
            return
        workers, queue, busy = found
        subscription.active = False
        # A worker waiting for an event stops at once; one handling an event finishes it.
        for worker in workers:
            if worker not in busy:
                worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        queue.members -= 1
        if subscription.queue is None:
            queues = self._hub.broadcast.get(subscription.topic, [])
            if queue in queues:
                queues.remove(queue)
