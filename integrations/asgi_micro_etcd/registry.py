"""``etcd://``: service discovery on etcd v3, with aetcd's asyncio client.

    etcd://[user:password@]host:2379[,host:2379...][?prefix=/micro/registry/&timeout=5]

Each node is one key, ``<prefix><service>/<version>/<node id>`` (each part percent-quoted so
that a ``/`` in a name cannot shift the others), holding the JSON of the service with just
that node, endpoints included. A node registered with a TTL sits on an etcd lease of its own,
rounded up to whole seconds (etcd's own minimum, about two seconds, applies), so etcd deletes
it when its process stops heartbeating. A heartbeat (``register`` again) keeps that one lease
alive and writes the key only when the record changed or the key went missing; a lease that
is gone (expired, or etcd lost its data) is granted anew and the key put again.
``deregister`` deletes the keys and revokes their leases.

``watch`` reads the keys under the prefix (of one service or all), then watches from the
revision after that read, so no change between the two is lost and a DELETE (also by lease
expiry) carries the node it removes, from what the watch has seen. When the connection
breaks, the watch reads again once etcd answers, reports what changed meanwhile as events,
and goes on watching: the generator outlives a restart of etcd.

A call that finds no connection connects again, trying the URL's hosts in order (aetcd talks
to one host per client), and is retried once; when no host answers it raises
``ServiceUnavailable`` naming the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar
from urllib.parse import quote

import aetcd
import aetcd.exceptions
import orjson

from asgi_micro.errors import ServiceUnavailable
from asgi_micro.registry.base import Event, EventType, Registry, Service

from ._client import EtcdURL, connect, parse_url, raise_if_cancelled

if TYPE_CHECKING:
    from asgi_micro.plugins import Parts

__all__ = ["DEFAULT_PREFIX", "EtcdRegistry"]

DEFAULT_PREFIX: Final = "/micro/registry/"

logger = logging.getLogger(__name__)

T = TypeVar("T")

# What connecting again may mend: no host, no answer in time, or an expired auth token
# (aetcd authenticates once, when it connects).
_LOST_CONNECTION = (
    aetcd.ConnectionFailedError,
    aetcd.ConnectionTimeoutError,
    aetcd.exceptions.UnauthenticatedError,
)
_RESUME_DELAYS: Final = (0.1, 0.2, 0.5, 1.0, 2.0)  # between attempts to watch again


@dataclass(slots=True)
class _Lease:
    """What this handle last wrote for one node: the value, and the lease it sits on."""

    value: bytes
    lease: int | None  # the lease id; None for a node registered without a TTL
    ttl: int | None


class EtcdRegistry(Registry):
    """Nodes as keys on etcd leases. ``url`` names the hosts (``parse_url``); ``prefix``, when
    given, overrides the URL's and starts every key (a ``/`` is added at its end)."""

    def __init__(self, url: str | EtcdURL = "etcd://", *, prefix: str | None = None) -> None:
        self._target = parse_url(url) if isinstance(url, str) else url
        if self._target.options:
            name = sorted(self._target.options)[0]
            raise ValueError(
                f"unknown option {name!r} in {self._target.redacted!r}; "
                "the options are prefix and timeout"
            )
        prefix = prefix or self._target.prefix or DEFAULT_PREFIX
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.url = self._target.redacted
        self._client: aetcd.Client | None = None
        self._reconnecting = asyncio.Lock()
        self._written: dict[bytes, _Lease] = {}

    @classmethod
    def from_url(cls, url: str, *, parts: Parts | None = None) -> Self:
        return cls(url)

    def lookup_advice(self) -> str:
        """What to check when a lookup finds nothing, for the client's error message."""
        return (
            f"nodes are looked up under the key prefix {self.prefix!r}: the service must "
            "register with the same prefix (?prefix= in MICRO_REGISTRY) and keep heartbeating"
        )

    async def start(self) -> None:
        if self._client is None:
            self._client = await connect(self._target)

    async def stop(self) -> None:
        """Close the connection; nodes registered with a TTL expire by it, the others stay."""
        client, self._client = self._client, None
        self._written.clear()
        if client is not None:
            await client.close()

    async def register(self, service: Service, *, ttl: float | None = None) -> None:
        if ttl is not None and not ttl > 0:
            raise ValueError(f"ttl must be positive, got {ttl}")
        seconds = None if ttl is None else max(1, math.ceil(ttl))
        for node in service.nodes:
            record = Service(
                name=service.name,
                version=service.version,
                metadata=service.metadata,
                endpoints=service.endpoints,
                nodes=[node],
            )
            key = self._key(service.name, service.version, node.id)
            await self._put(key, orjson.dumps(record.to_dict()), seconds)

    async def deregister(self, service: Service) -> None:
        for node in service.nodes:
            await self._withdraw(self._key(service.name, service.version, node.id))

    async def get_service(self, name: str) -> list[Service]:
        kvs = await self._call(lambda client: client.get_prefix(self._service_prefix(name)))
        return _merge_versions(kvs)

    async def list_services(self) -> list[Service]:
        kvs = await self._call(lambda client: client.get_prefix(self.prefix.encode()))
        return sorted(_merge_versions(kvs), key=lambda record: (record.name, record.version))

    async def watch(self, service: str | None = None) -> AsyncGenerator[Event, None]:
        prefix = self.prefix.encode() if service is None else self._service_prefix(service)
        seen, first = await self._read_and_watch(prefix)  # seen: what a DELETE removes
        changes: _Changes | None = first
        try:
            while changes is not None:
                try:
                    async for change in changes:
                        event = _event(change, seen)
                        if event is not None:
                            yield event
                except aetcd.ClientError as exc:
                    logger.warning("etcd: watching %r on %s broke: %s", prefix, self.url, exc)
                    with contextlib.suppress(ServiceUnavailable):
                        await self._reconnect(changes.client)
                await changes.aclose()
                changes = None
                resumed = await self._watch_again(prefix)
                if resumed is None:
                    return  # stopped: the watch ends with the connection
                current, changes = resumed
                for event in _differences(seen, current):
                    yield event
        finally:
            if changes is not None:
                await changes.aclose()

    async def _watch_again(self, prefix: bytes) -> tuple[dict[bytes, Service], _Changes] | None:
        """Read ``prefix`` and watch it from there as soon as etcd answers; ``None`` once
        the registry is stopped."""
        for attempt in itertools.count():
            if self._client is None:
                return None
            try:
                return await self._read_and_watch(prefix)
            except ServiceUnavailable as exc:
                delay = _RESUME_DELAYS[min(attempt, len(_RESUME_DELAYS) - 1)]
                logger.debug("etcd: watching %r again in %ss: %s", prefix, delay, exc)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _read_and_watch(self, prefix: bytes) -> tuple[dict[bytes, Service], _Changes]:
        """The records under ``prefix``, and a watch of what changes after that read."""
        records: dict[bytes, Service] = {}
        revision = await self._read(prefix, records)
        changes = await self._call(lambda client: _watch_from(client, prefix, revision + 1))
        return records, changes

    async def _read(self, prefix: bytes, into: dict[bytes, Service]) -> int:
        """Fill ``into`` with the records under ``prefix``; the revision they were read at."""
        found = await self._call(lambda client: client.get_prefix(prefix))
        for kv in found:
            record = _record(kv.key, kv.value)
            if record is not None:
                into[kv.key] = record
        revision: int = found.header.revision
        return revision

    async def _put(self, key: bytes, value: bytes, ttl: int | None) -> None:
        written = self._written.get(key)
        if written is not None and written.ttl == ttl and written.lease is not None:
            lease = written.lease
            reply = await self._call(lambda client: client.refresh_lease(lease))
            if reply is not None and reply.TTL > 0:
                # The lease lives: write only if the key no longer holds this value.
                await self._call(lambda client: _put_unless_holding(client, key, value, lease))
                written.value = value
                return
        elif written is not None and written.ttl == ttl:  # no TTL, nothing to keep alive
            if written.value != value:
                await self._call(lambda client: client.put(key, value))
                written.value = value
            return
        granted = None
        if ttl is not None:
            new_lease = await self._call(lambda client: client.lease(ttl))
            granted = int(new_lease.id)
        await self._call(lambda client: client.put(key, value, lease=granted))
        self._written[key] = _Lease(value, granted, ttl)
        if written is not None and written.lease is not None and written.lease != granted:
            await self._revoke(written.lease)  # the key moved off it, so it holds nothing

    async def _withdraw(self, key: bytes) -> None:
        written = self._written.pop(key, None)
        await self._call(lambda client: client.delete(key))
        if written is not None and written.lease is not None:
            await self._revoke(written.lease)

    async def _revoke(self, lease: int) -> None:
        async def revoke(client: aetcd.Client) -> None:
            try:
                await client.revoke_lease(lease)
            except aetcd.ClientError as exc:
                if "lease not found" not in str(exc):  # expired already: nothing to revoke
                    raise

        await self._call(revoke)

    async def _call(self, operation: Callable[[aetcd.Client], Awaitable[T]]) -> T:
        """Run ``operation`` on the client; connect again (to the next host that answers)
        and retry once if it found no connection. etcd's errors become ServiceUnavailable."""
        client = self._started()
        try:
            result = await operation(client)
        except _LOST_CONNECTION:
            client = await self._reconnect(client)
        except aetcd.ClientError as exc:
            raise ServiceUnavailable(f"etcd at {self.url}: {_reason(exc)}") from exc
        else:
            raise_if_cancelled()
            return result
        try:
            result = await operation(client)
        except aetcd.ClientError as exc:
            raise ServiceUnavailable(f"etcd at {self.url}: {_reason(exc)}") from exc
        raise_if_cancelled()
        return result

    async def _reconnect(self, failed: aetcd.Client) -> aetcd.Client:
        """A client on a host that answers, in place of ``failed`` (once, whoever asks)."""
        async with self._reconnecting:
            current = self._started()
            if current is not failed:
                return current  # another task has connected again meanwhile
            client = await connect(self._target)
            if self._client is None:  # stopped while connecting
                await client.close()
                raise ServiceUnavailable(f"the etcd registry {self.url} is stopped")
            self._client = client
        with contextlib.suppress(Exception):
            await failed.close()  # ends the watches on it: they read again and go on
        return client

    def _started(self) -> aetcd.Client:
        if self._client is None:
            raise ServiceUnavailable(f"the etcd registry {self.url} is not started")
        return self._client

    def _key(self, service: str, version: str, node_id: str) -> bytes:
        return self._service_prefix(service) + f"{_quote(version)}/{_quote(node_id)}".encode()

    def _service_prefix(self, service: str) -> bytes:
        return f"{self.prefix}{_quote(service)}/".encode()


class _Changes:
    """One etcd watch as an iterator of aetcd events, with the client it runs on."""

    def __init__(self, client: aetcd.Client, watch: Any) -> None:
        self.client = client
        self._watch = watch
        self._events: AsyncGenerator[Any, None] = aiter(watch)

    def __aiter__(self) -> AsyncGenerator[Any, None]:
        return self._events

    async def aclose(self) -> None:
        await self._events.aclose()
        with contextlib.suppress(Exception):
            await self._watch.cancel()


async def _watch_from(client: aetcd.Client, prefix: bytes, revision: int) -> _Changes:
    changes = _Changes(client, await client.watch_prefix(prefix, start_revision=revision))
    try:
        raise_if_cancelled()
    except asyncio.CancelledError:
        await changes.aclose()
        raise
    return changes


async def _put_unless_holding(client: aetcd.Client, key: bytes, value: bytes, lease: int) -> None:
    await client.transaction(
        compare=[client.transactions.value(key) == value],
        success=[],
        failure=[client.transactions.put(key, value, lease=lease)],
    )


def _event(change: Any, seen: dict[bytes, Service]) -> Event | None:
    """The registry event of an etcd one; ``None`` for a write that changed nothing."""
    key: bytes = change.kv.key
    if change.kind == aetcd.EventKind.DELETE:
        gone = seen.pop(key, None)
        return None if gone is None else Event(EventType.DELETE, gone)
    record = _record(key, change.kv.value)
    if record is None:
        return None
    before = seen.get(key)
    seen[key] = record
    if before is None:
        return Event(EventType.CREATE, record)
    return None if before == record else Event(EventType.UPDATE, record)


def _record(key: bytes, value: bytes) -> Service | None:
    try:
        record = Service.from_dict(orjson.loads(value))
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        logger.warning("etcd: ignoring the key %r, not a service record: %s", key, exc)
        return None
    return record if len(record.nodes) == 1 else None


def _merge_versions(kvs: Any) -> list[Service]:
    """One record per version, its nodes in the order they were first registered; the
    newest write describes the version (metadata, endpoints)."""
    newest: dict[str, tuple[int, Service]] = {}
    nodes: dict[str, list[tuple[int, Service]]] = {}
    for kv in kvs:
        record = _record(kv.key, kv.value)
        if record is None:
            continue
        if record.version not in newest or kv.mod_revision > newest[record.version][0]:
            newest[record.version] = (kv.mod_revision, record)
        nodes.setdefault(record.version, []).append((kv.create_revision, record))
    merged = []
    for version, (_, record) in newest.items():
        ordered = sorted(nodes[version], key=lambda pair: pair[0])
        merged.append(
            Service(
                name=record.name,
                version=version,
                metadata=record.metadata,
                endpoints=record.endpoints,
                nodes=[node_record.nodes[0] for _, node_record in ordered],
            )
        )
    return merged


def _differences(seen: dict[bytes, Service], current: dict[bytes, Service]) -> list[Event]:
    """The events that turn ``seen`` into ``current``, which ``seen`` then becomes."""
    events = [Event(EventType.DELETE, seen.pop(key)) for key in list(seen) if key not in current]
    for key, record in current.items():
        before = seen.get(key)
        seen[key] = record
        if before is None:
            events.append(Event(EventType.CREATE, record))
        elif before != record:
            events.append(Event(EventType.UPDATE, record))
    return events


def _quote(part: str) -> str:
    return quote(part, safe="")


def _reason(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__
