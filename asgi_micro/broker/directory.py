"""Who subscribes to what, as the registry tells it: the embedded broker's view of its peers.

A node that receives events through the embedded broker advertises its subscriptions in its
node metadata, one key per topic and queue group it takes (``broker.sub.<n>`` =
``"<concurrency> <topic>[ <queue>]"``), and how many there are (``broker.subs``), so that a
reader can tell a record the registry cut short (mDNS leaves out what its TXT record cannot
hold) from a complete one. A node that left a queue group goes on advertising it with a
concurrency of 0 for as long as it runs: the group exists, though this node takes none of it.

The ``Directory`` keeps every such node in memory: it watches the registry first, then lists
every service (``list_services`` and ``get_service`` for each), applies the changes the watch
reports as they come (looking a service up again when a record came cut short), and lists
everything again every ``refresh`` seconds in case a change was missed. A node in the same
process tells the directories on its registry at once (``announce``), so that what it
subscribes is known before ``subscribe`` returns. Queue groups are remembered once seen, with
when they were last seen: a group whose members are all down still exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from ..registry import Event, EventType, Node, Registry
from ..registry import Service as ServiceRecord

__all__ = ["Advertised", "Directory", "Member", "advertise", "announce", "subscriptions_of"]

logger = logging.getLogger(__name__)

_COUNT_KEY = "broker.subs"
_PREFIX = "broker.sub."


@dataclass(frozen=True, slots=True)
class Advertised:
    """One subscription a node advertises: a topic, its queue group (``None``: broadcast), and
    how many of its events the node handles at once."""

    topic: str
    queue: str | None
    concurrency: int


@dataclass(frozen=True, slots=True)
class Member:
    """A node that receives events, and what it subscribes to."""

    id: str
    service: str
    host: str
    port: int
    subscriptions: tuple[Advertised, ...]

    def takes(self, topic: str, queue: str | None) -> Advertised | None:
        """The subscription that takes ``topic`` for ``queue`` here, if one does."""
        for subscription in self.subscriptions:
            if (
                subscription.topic == topic
                and subscription.queue == queue
                and subscription.concurrency > 0
            ):
                return subscription
        return None


def advertise(subscriptions: Iterable[Advertised]) -> dict[str, str]:
    """The node metadata that advertises ``subscriptions`` (one entry per topic and group)."""
    merged: dict[tuple[str, str | None], int] = {}
    for subscription in subscriptions:
        key = (subscription.topic, subscription.queue)
        merged[key] = max(merged.get(key, 0), subscription.concurrency)
    metadata = {_COUNT_KEY: str(len(merged))}
    for n, ((topic, queue), concurrency) in enumerate(sorted(merged.items(), key=str)):
        value = f"{concurrency} {topic}" if queue is None else f"{concurrency} {topic} {queue}"
        metadata[f"{_PREFIX}{n}"] = value
    return metadata


def subscriptions_of(metadata: Mapping[str, str]) -> tuple[tuple[Advertised, ...], bool]:
    """The subscriptions node metadata advertises, and whether the metadata holds them all."""
    found = []
    for key, value in metadata.items():
        if not key.startswith(_PREFIX):
            continue
        concurrency, _, rest = value.partition(" ")
        topic, _, queue = rest.partition(" ")
        if not concurrency.isdigit() or not topic:
            continue
        found.append(Advertised(topic, queue or None, int(concurrency)))
    count = metadata.get(_COUNT_KEY)
    complete = count is None or (count.isdigit() and int(count) <= len(found))
    if count is None and found:
        complete = False  # the count was cut, so more may have been
    return tuple(found), complete


_DIRECTORIES: weakref.WeakKeyDictionary[Registry, weakref.WeakSet[Directory]] = (
    weakref.WeakKeyDictionary()
)


def announce(registry: Registry, record: ServiceRecord) -> None:
    """Tell the directories of this process on ``registry`` what ``record`` now registers."""
    for directory in list(_DIRECTORIES.get(registry, ())):
        directory.observe(EventType.UPDATE, record)


class Directory:
    """The nodes that receive events, from ``registry``; ``on_join(topic, queue)`` is called
    when a queue group gains a member (a broadcast subscription: ``queue`` is ``None``)."""

    def __init__(
        self,
        registry: Registry,
        *,
        refresh: float = 30.0,
        on_join: Callable[[str, str | None], None] | None = None,
        trusts: Callable[[str, Node], bool] | None = None,
    ) -> None:
        self.registry = registry
        self.refresh = refresh
        self.on_join = on_join
        self.trusts = trusts
        """Whether a node's registration is trusted (auth on: its proof verifies); nodes that
        are not receive nothing."""
        self.members: dict[str, Member] = {}  # by node id
        self.groups: dict[tuple[str, str], float] = {}
        """Every queue group seen, ``(topic, queue)``, with when it was last seen (wall time)."""
        self._by_topic: dict[str, dict[str, Member]] = {}
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._fetches: dict[str, asyncio.Task[None]] = {}
        self._buffered: list[tuple[EventType, ServiceRecord]] | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start watching; ``ready`` waits for the first listing."""
        if self._task is not None:
            return
        _DIRECTORIES.setdefault(self.registry, weakref.WeakSet()).add(self)
        self._task = asyncio.create_task(self._run(), name="asgi-micro broker directory")

    async def ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the first listing; whether it is done."""
        if not self._ready.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._ready.wait()
        return self._ready.is_set()

    async def stop(self) -> None:
        directories = _DIRECTORIES.get(self.registry)
        if directories is not None:
            directories.discard(self)
        tasks = [task for task in (self._task, *self._fetches.values()) if task is not None]
        self._task = None
        self._fetches.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- reading ----------------------------------------------------------------------------------

    def broadcast(self, topic: str) -> list[Member]:
        """The nodes with a broadcast subscription to ``topic``."""
        return [m for m in self._by_topic.get(topic, {}).values() if m.takes(topic, None)]

    def group(self, topic: str, queue: str) -> list[Member]:
        """The members of queue group ``queue`` on ``topic`` registered now."""
        return [m for m in self._by_topic.get(topic, {}).values() if m.takes(topic, queue)]

    def queues(self, topic: str, *, since: float) -> list[str]:
        """The queue groups on ``topic`` seen at ``since`` (wall time) or later."""
        return sorted(q for (t, q), seen in self.groups.items() if t == topic and seen >= since)

    def remember(self, groups: Iterable[tuple[str, str, float]]) -> None:
        """Groups seen before (by an earlier run, from the outbox)."""
        for topic, queue, seen in groups:
            key = (topic, queue)
            self.groups[key] = max(seen, self.groups.get(key, 0.0))

    # -- following the registry -----------------------------------------------------------------

    def observe(self, type: EventType, record: ServiceRecord) -> None:
        """Apply a change to ``record``'s nodes (from the watch, or announced in-process)."""
        if self._buffered is not None:
            self._buffered.append((type, record))
        self._apply(type, record)

    async def _run(self) -> None:
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("broker: watching %s failed, retrying: %s", self.registry, exc)
            await asyncio.sleep(1.0)

    async def _follow(self) -> None:
        events = self.registry.watch()
        first = asyncio.ensure_future(anext(events))
        try:
            await asyncio.sleep(0)  # the watch subscribes before the listing below
            listing = asyncio.create_task(self._list_forever())
            try:
                event = await first
                while True:
                    self._received(event)
                    event = await anext(events)
            finally:
                listing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listing
        finally:
            if not first.done():
                first.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await first
            await events.aclose()

    async def _list_forever(self) -> None:
        while True:
            try:
                await self._list_all()
                self._ready.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("broker: listing %s failed: %s", self.registry, exc)
                await asyncio.sleep(1.0)
                continue
            await asyncio.sleep(self.refresh)

    async def _list_all(self) -> None:
        self._buffered = []
        try:
            names = {record.name for record in await self.registry.list_services()}
            looked_up = await asyncio.gather(*(self.registry.get_service(n) for n in names))
            found = [record for records in looked_up for record in records]
        finally:
            buffered, self._buffered = self._buffered, None
        members = {m.id: m for record in found for m in _members(record, self.trusts)}
        for gone in set(self.members) - set(members):
            self._remove(gone)
        for member in members.values():
            self._add(member)
        for type, record in buffered or ():  # what changed while listing, in order
            self._apply(type, record)

    def _received(self, event: Event) -> None:
        self.observe(event.type, event.service)
        if event.type is not EventType.DELETE and not all(
            subscriptions_of(node.metadata)[1] for node in event.service.nodes
        ):
            self._fetch_later(event.service.name)

    def _fetch_later(self, name: str) -> None:
        if name not in self._fetches:
            self._fetches[name] = asyncio.create_task(self._fetch(name))

    async def _fetch(self, name: str) -> None:
        try:
            for record in await self.registry.get_service(name):
                self._apply(EventType.UPDATE, record)
        except Exception as exc:
            logger.warning("broker: looking up %s failed: %s", name, exc)
        finally:
            self._fetches.pop(name, None)

    def _apply(self, type: EventType, record: ServiceRecord) -> None:
        if type is EventType.DELETE:
            for node in record.nodes:
                self._remove(node.id)
            return
        for member in _members(record, self.trusts):
            self._add(member)
        for node in record.nodes:
            if not subscriptions_of(node.metadata)[0] and node.id in self.members:
                self._remove(node.id)  # it subscribes to nothing any more

    def _add(self, member: Member) -> None:
        previous = self.members.get(member.id)
        if previous == member:
            self._seen(member)
            return
        if previous is not None:
            self._unindex(previous)
        self.members[member.id] = member
        for subscription in member.subscriptions:
            self._by_topic.setdefault(subscription.topic, {})[member.id] = member
        self._seen(member)
        if self.on_join is not None:
            before = previous.subscriptions if previous is not None else ()
            for subscription in member.subscriptions:
                if subscription not in before:
                    self.on_join(subscription.topic, subscription.queue)

    def _seen(self, member: Member) -> None:
        now = time.time()
        for subscription in member.subscriptions:
            if subscription.queue is not None:
                self.groups[(subscription.topic, subscription.queue)] = now

    def _remove(self, node_id: str) -> None:
        member = self.members.pop(node_id, None)
        if member is not None:
            self._unindex(member)

    def _unindex(self, member: Member) -> None:
        for subscription in member.subscriptions:
            nodes = self._by_topic.get(subscription.topic)
            if nodes is not None:
                nodes.pop(member.id, None)
                if not nodes:
                    del self._by_topic[subscription.topic]


def _members(record: ServiceRecord, trusts: Callable[[str, Node], bool] | None) -> list[Member]:
    members = []
    for node in record.nodes:
        if trusts is not None and not trusts(record.name, node):
            continue
        subscriptions, _ = subscriptions_of(node.metadata)
        if subscriptions:
            members.append(_member(record.name, node, subscriptions))
    return members


def _member(service: str, node: Node, subscriptions: tuple[Advertised, ...]) -> Member:
    return Member(node.id, service, node.host, node.port, subscriptions)
