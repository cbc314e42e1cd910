"""``nats://``: service discovery in a NATS JetStream key-value bucket.

    nats://[user:password@]host:4222[,host2:4222][?bucket=micro_registry&timeout=5&max_age=3600]

One key per node, ``<service>.<version>.<node id>`` (``node_key``), each part escaped to
letters, digits, ``-`` and ``_`` (any other character as ``=XX``, its UTF-8 bytes in hex:
``1.0.0`` is ``1=2E0=2E0``), so the nodes of one service are the subject ``<service>.>``. The
value is JSON: the service record holding that one node, its ``ttl``, and when the node was
first registered and last changed (``registered``, ``changed``: the registering host's clock).

A node lives ``ttl`` seconds from its last put as the server stamped it. nats-server 2.9 has no
TTL per message, so readers leave out a node past its time themselves, and a lookup that finds
one deletes it (only if no heartbeat came since: the delete names the revision it saw). The
bucket's ``max_age`` bounds what crashed nodes leave behind when nobody looks, delete markers
included; a ``ttl`` over it is refused. A node registered without a ttl is put again every 20 s
with a ttl of 60 s for as long as this registry runs, as with mDNS: it lives until deregistered
or until its process is gone. After a reconnect every node registered through this registry is
put again at once, for what is left of its ttl (the server may have lost it). ``stop``
withdraws the nodes still registered through it.

``watch`` follows the bucket: the first put of a node is CREATE, a put that changes its record
UPDATE (a heartbeat is none), a delete or purge DELETE, and so is the end of a node's ttl with
no heartbeat (a timer per node). "From now on" counts from the first advance of the iterator:
a node registered while the watch was still subscribing is reported all the same (its stamps
are after the watch began), so a cache that watches, then looks up, misses nothing. While the
connection is down a watch reports no expiry (it cannot see the heartbeats); once reconnected
it reads the bucket again and reports what changed meanwhile.

``start`` creates the bucket if it is missing (``history`` 1, ``max_age``, ``replicas``,
``storage``), and a heartbeat creates it again if it disappeared (a server that lost its
storage); a bucket that exists is the operator's and is left as it is. A lookup reads the
bucket through an ordered consumer of its own, which the server drops a second after the read;
it and a watch's first read take as many entries as the consumer's info says it sent and has
left to send, rather than nats-py's "all in" marker, which a busy server can make come before
entries it had sent (nats-io/nats.py#842: a live node then looked gone).
The hosts' clocks should agree with the server's to well within a ttl (NTP).

Options: ``bucket`` (``micro_registry``), ``timeout`` (of the connect and of each request,
5 s), ``max_age`` (3600 s; 0 keeps keys until deleted), ``replicas`` (1) and ``storage``
(``file`` or ``memory``), the last three for a bucket that ``start`` creates.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import enum
import logging
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Self

import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE, KeyValue

from asgi_micro.errors import PayloadTooLarge, ServiceUnavailable
from asgi_micro.registry import Event, EventType, Node, Registry, Service

from ._connection import NATS_ERRORS, connect, parse_url

if TYPE_CHECKING:
    from asgi_micro.plugins import Parts

__all__ = ["DEFAULT_BUCKET", "KEEP_ALIVE_TTL", "NATSRegistry", "node_key"]

logger = logging.getLogger(__name__)

DEFAULT_BUCKET: Final = "micro_registry"
KEEP_ALIVE_TTL: Final = 60.0
"""The ttl of a node registered without one; it is put again every third of it."""
_CLOCK_SLACK: Final = 1.0  # a registration this long before a watch began counts as after it
_READ_LINGER: Final = 1.0  # how long the server keeps a lookup's consumer after the read
_WATCH_LINGER: Final = 30.0  # ... and a watch's, once its connection is gone
_RETRY: Final = 1.0
_DELETED: Final = (KV_DEL, KV_PURGE)
_MARKER_REASON: Final = "Nats-Marker-Reason"
_BUCKET_NAME: Final = re.compile(r"[A-Za-z0-9_-]+")
_KEPT: Final = re.compile(r"[A-Za-z0-9_-]")
_STORAGE: Final = {"file": api.StorageType.FILE, "memory": api.StorageType.MEMORY}
_OPTIONS: Final = frozenset({"bucket", "timeout", "max_age", "replicas", "storage"})


def node_key(service: str, version: str, node_id: str) -> str:
    """The key of one node in the bucket: ``greeter.1=2E0=2E0.greeter-3f2a...``."""
    return ".".join(_escaped(part) for part in (service, version, node_id))


class NATSRegistry(Registry):
    def __init__(
        self,
        *,
        servers: Sequence[str] = ("nats://127.0.0.1:4222",),
        client: Client | None = None,
        bucket: str = DEFAULT_BUCKET,
        timeout: float = 5.0,
        max_age: float = 3600.0,
        replicas: int = 1,
        storage: str = "file",
        source: str = "",
        url: str = "",
    ) -> None:
        if not _BUCKET_NAME.fullmatch(bucket):
            raise ValueError(f"a bucket name is letters, digits, '-' and '_', got {bucket!r}")
        if storage not in _STORAGE:
            raise ValueError(f"storage is 'file' or 'memory', got {storage!r}")
        if timeout <= 0 or replicas < 1:
            raise ValueError("timeout must be positive and replicas at least 1")
        if max_age != 0 and max_age < 2 * KEEP_ALIVE_TTL:
            raise ValueError(
                f"max_age is 0 (keys stay until deleted) or at least {2 * KEEP_ALIVE_TTL:g} s, "
                f"got {max_age:g}"
            )
        self.url = url or "nats://" + ",".join(s.removeprefix("nats://") for s in servers)
        self.servers = list(servers)
        self.bucket = bucket
        self.timeout = timeout
        self.max_age = max_age
        self.replicas = replicas
        self.storage = storage
        self.source = source
        self._client = client  # injected: the caller connects and closes it
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._kv: KeyValue | None = None
        self._bucket_max_age = 0.0  # of the bucket as it is, once started
        self._registered: dict[str, _Registration] = {}  # by key: what this registry put
        self._keep_alive: asyncio.Task[None] | None = None
        self._reconnected_now = asyncio.Event()  # wakes the keep-alive
        self._watches: set[asyncio.Queue[_Signal]] = set()

    @classmethod
    def from_url(cls, url: str, *, parts: Parts | None = None) -> Self:
        parsed = parse_url(url, options=_OPTIONS)
        query = parsed.options
        options: dict[str, Any] = {}
        try:
            for name in ("bucket", "storage"):
                if name in query:
                    options[name] = query[name]
            for name in ("timeout", "max_age"):
                if name in query:
                    options[name] = float(query[name])
            if "replicas" in query:
                options["replicas"] = int(query["replicas"])
        except ValueError as exc:
            raise ValueError(f"a bad option in {parsed.shown!r}: {exc}") from None
        source = parts.service if parts is not None else ""
        return cls(servers=parsed.servers, source=source, url=parsed.shown, **options)

    # lifecycle

    async def start(self) -> None:
        if self._kv is not None:
            return
        nc = self._client
        if nc is None:
            try:
                nc = await connect(
                    self.servers,
                    name=self.source or "asgi-micro registry",
                    timeout=self.timeout,
                    disconnected=self._disconnected,
                    reconnected=self._reconnected,
                )
            except NATS_ERRORS as exc:
                raise ServiceUnavailable(f"cannot reach NATS at {self.url}: {exc!r}") from exc
        js = nc.jetstream(timeout=self.timeout)
        try:
            kv = await self._open_bucket(js)
        except BaseException as exc:
            if self._client is None:
                await nc.close()
            if isinstance(exc, NATS_ERRORS):
                raise ServiceUnavailable(
                    f"no JetStream bucket {self.bucket} at {self.url}: {exc!r}"
                ) from exc
            raise
        self._nc, self._js, self._kv = nc, js, kv

    async def stop(self) -> None:
        nc, kv = self._nc, self._kv
        if nc is None or kv is None:
            return
        self._nc = self._js = self._kv = None
        if self._keep_alive is not None:
            self._keep_alive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keep_alive
            self._keep_alive = None
        for signals in self._watches:
            signals.put_nowait(_Control.STOP)
        registered, self._registered = list(self._registered), {}
        if nc.is_connected:  # else the nodes expire by themselves
            await asyncio.gather(*(kv.delete(key) for key in registered), return_exceptions=True)
        if self._client is None:
            with contextlib.suppress(*NATS_ERRORS):  # a connection lost as it closes
                await nc.close()

    async def _open_bucket(self, js: JetStreamContext) -> KeyValue:
        """The bucket, created if it is missing; notes its ``max_age``."""
        try:
            kv = await js.key_value(self.bucket)
        except nats.js.errors.BucketNotFoundError:
            config = api.KeyValueConfig(
                bucket=self.bucket,
                history=1,
                ttl=self.max_age or None,
                replicas=self.replicas,
                storage=_STORAGE[self.storage],
                direct=True,
            )
            try:
                kv = await js.create_key_value(config)
                logger.info("created the NATS KV bucket %s for the registry", self.bucket)
            except nats.js.errors.BadRequestError:
                kv = await js.key_value(self.bucket)  # made meanwhile by another
        self._bucket_max_age = (await kv.status()).ttl or 0.0
        return kv

    def _started(self) -> KeyValue:
        if self._kv is None:
            raise RuntimeError(f"{self!r} is not started: await registry.start() first")
        return self._kv

    def _connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    async def _disconnected(self) -> None:
        if self._nc is not None:  # not our own stop
            logger.warning("the registry lost NATS at %s; nats-py reconnects", self.url)

    async def _reconnected(self) -> None:
        logger.warning("the registry reconnected to NATS at %s", self.url)
        self._reconnected_now.set()
        for signals in self._watches:
            signals.put_nowait(_Control.RESYNC)

    # announcing

    async def register(self, service: Service, *, ttl: float | None = None) -> None:
        if ttl is not None and ttl <= 0:
            raise ValueError(f"ttl must be positive, got {ttl}")
        self._started()
        if ttl is not None and self._bucket_max_age and ttl > self._bucket_max_age:
            raise ValueError(
                f"ttl={ttl:g} is over the max_age of the bucket {self.bucket} "
                f"({self._bucket_max_age:g} s): the server would drop the node before its end"
            )
        now, ends = time.time(), None if ttl is None else time.monotonic() + ttl
        for node in service.nodes:
            key = node_key(service.name, service.version, node.id)
            record = _single_node(service, node).to_dict()
            previous = self._registered.get(key)
            registration = _Registration(
                record,
                ends,
                registered=previous.registered if previous else now,
                changed=previous.changed if previous and previous.record == record else now,
            )
            self._registered[key] = registration
            await self._put(key, registration, ttl or self._keep_alive_ttl())
        if self._keep_alive is None and service.nodes:
            self._keep_alive = asyncio.create_task(
                self._keep_alive_forever(), name=f"asgi-micro registry keep-alive {self.bucket}"
            )

    async def deregister(self, service: Service) -> None:
        kv = self._started()
        for node in service.nodes:
            key = node_key(service.name, service.version, node.id)
            self._registered.pop(key, None)
            try:
                await kv.delete(key)
            except nats.js.errors.NoStreamResponseError:
                continue  # no bucket: nothing to withdraw
            except NATS_ERRORS as exc:
                raise ServiceUnavailable(
                    f"cannot deregister {key} in NATS at {self.url}: {exc!r}"
                ) from exc

    async def _put(self, key: str, registration: _Registration, ttl: float) -> None:
        value = orjson.dumps(
            {
                "service": registration.record,
                "ttl": ttl,
                "registered": registration.registered,
                "changed": registration.changed,
            }
        )
        try:
            try:
                await self._started().put(key, value)
            except nats.js.errors.NoStreamResponseError:
                logger.warning("the NATS KV bucket %s is gone: creating it again", self.bucket)
                assert self._js is not None
                self._kv = await self._open_bucket(self._js)
                await self._kv.put(key, value)
        except nats.errors.MaxPayloadError as exc:
            raise PayloadTooLarge(
                f"the record of {key} ({len(value)} bytes) is over the NATS server's max_payload"
            ) from exc
        except NATS_ERRORS as exc:
            raise ServiceUnavailable(
                f"cannot register {key} in NATS at {self.url}: {exc!r}"
            ) from exc

    def _keep_alive_ttl(self) -> float:
        return min(KEEP_ALIVE_TTL, self._bucket_max_age / 2 or KEEP_ALIVE_TTL)

    async def _keep_alive_forever(self) -> None:
        """Put again the nodes registered without a ttl, well within their ttl; and after a
        reconnect every node at once, for what is left of its ttl (the server may have lost
        it, and its own heartbeat may be a while away)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reconnected_now.wait(), self._keep_alive_ttl() / 3)
            reconnected = self._reconnected_now.is_set()
            self._reconnected_now.clear()
            for key, registration in list(self._registered.items()):
                if registration.ends is None:
                    ttl = self._keep_alive_ttl()
                elif reconnected:
                    ttl = registration.ends - time.monotonic()
                else:
                    continue
                if ttl > 0 and self._registered.get(key) is registration:
                    try:
                        await self._put(key, registration, ttl)
                    except ServiceUnavailable as exc:
                        logger.warning("%s; trying again", exc)

    # looking up

    async def get_service(self, name: str) -> list[Service]:
        if not name:
            return []
        return _merged(await self._read(f"{_escaped(name)}.>"))

    async def list_services(self) -> list[Service]:
        services = _merged(await self._read(">"))
        return sorted(services, key=lambda service: (service.name, service.version))

    async def _read(self, keys: str) -> list[_Node]:
        """The live nodes under ``keys`` now; those past their ttl are deleted on the way."""
        kv = self._started()
        assert self._js is not None
        try:
            entries = await _snapshot(self._js, self.bucket, keys, self.timeout)
        except nats.js.errors.NotFoundError:
            return []  # no bucket (yet): no nodes
        except NATS_ERRORS as exc:
            raise ServiceUnavailable(f"cannot read the registry at {self.url}: {exc!r}") from exc
        now = time.time()
        nodes = [node for node in map(_decode, entries) if node is not None]
        expired = [node for node in nodes if node.expires <= now]
        # ``last``: a heartbeat that came since keeps its node
        await asyncio.gather(
            *(kv.delete(node.key, last=node.revision) for node in expired), return_exceptions=True
        )
        return [node for node in nodes if node.expires > now]

    # watching

    async def watch(self, service: str | None = None) -> AsyncGenerator[Event, None]:
        self._started()
        since = time.time() - _CLOCK_SLACK
        keys = f"{_escaped(service)}.>" if service is not None else ">"
        signals: asyncio.Queue[_Signal] = asyncio.Queue()
        watch = _Watch(signals)
        generation = 1
        snapshot: dict[str, _Node] | None = {}  # what the bucket holds, until it is all in
        following: _Following | None = None
        try:
            self._watches.add(signals)
            following = await self._follow(keys, signals, generation, retry=False)
            while following is not None:
                signal = await signals.get()
                if signal is _Control.STOP:
                    return
                if signal is _Control.RESYNC:
                    await following.close()
                    generation += 1
                    following = await self._follow(keys, signals, generation, retry=True)
                    snapshot = {}
                elif isinstance(signal, _Expired):
                    if not self._connected():  # its heartbeats may be there unseen
                        watch.check_later(signal)
                    elif event := watch.expire(signal):
                        yield event
                elif signal.generation != generation:
                    continue  # from a consumer that was replaced
                elif snapshot is not None:
                    if signal.entry is not None:
                        if (node := _decode(signal.entry)) is not None:
                            snapshot[node.key] = node
                        else:
                            snapshot.pop(signal.entry.key, None)
                        continue
                    first = generation == 1  # else a read after a reconnect
                    for event in watch.reconcile(snapshot, since=since if first else None):
                        yield event
                    snapshot = None
                elif signal.entry is not None and (event := watch.apply(signal.entry)):
                    yield event
        finally:
            self._watches.discard(signals)
            watch.close()
            if following is not None:
                await following.close()

    async def _follow(
        self, keys: str, signals: asyncio.Queue[_Signal], generation: int, *, retry: bool
    ) -> _Following | None:
        """A consumer of the bucket's ``keys`` feeding ``signals``; ``None`` once stopped."""
        failing = False
        while (js := self._js) is not None:
            following = _Following(signals, generation, self.bucket)
            try:
                await following.start(js, keys)
            except NATS_ERRORS as exc:
                if not retry:
                    raise ServiceUnavailable(
                        f"cannot watch the registry at {self.url}: {exc!r}"
                    ) from exc
                if not failing:
                    logger.warning("cannot watch the registry at %s (%r); retrying", self.url, exc)
                failing = True
                await asyncio.sleep(_RETRY)
                continue
            return following
        return None


async def _snapshot(
    js: JetStreamContext, bucket: str, keys: str, timeout: float
) -> list[KeyValue.Entry]:
    """The newest entry of each key under ``keys`` (delete markers included), as the bucket
    holds them now.

    Read on an ordered consumer of its own, counting what the server says it has sent and has
    left to send. nats-py's ``KeyValue.watch`` says the bucket's content is all in (its
    ``None``) when the consumer's info reports nothing pending and nothing has reached the
    subscription yet; a busy server may answer the info before it writes the entries it has
    already sent, and the read would then end empty: a live node would look gone
    (nats-io/nats.py#842)."""
    sub = await _subscribe(js, bucket, keys, _READ_LINGER)
    try:
        entries: dict[str, KeyValue.Entry] = {}
        for _ in range(_sent_and_pending(await sub.consumer_info())):
            entry = _entry(await sub.next_msg(timeout=timeout), bucket)
            entries[entry.key] = entry  # (a consumer that nats-py had to reset sends it again)
        return list(entries.values())
    finally:
        with contextlib.suppress(*NATS_ERRORS):
            await sub.unsubscribe()


async def _subscribe(
    js: JetStreamContext,
    bucket: str,
    keys: str,
    linger: float,
    cb: Callable[[Msg], Awaitable[None]] | None = None,
) -> JetStreamContext.PushSubscription:
    """An ordered consumer of the newest entry of each of the bucket's ``keys``, then of what
    comes; the server drops it ``linger`` seconds after its connection is gone."""
    return await js.subscribe(
        _prefix(bucket) + keys,
        stream=f"KV_{bucket}",
        cb=cb,
        ordered_consumer=True,
        deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
        inactive_threshold=linger,
    )


def _sent_and_pending(info: api.ConsumerInfo) -> int:
    """How many entries a consumer had sent and had left to send when its info was read."""
    sent = info.delivered.consumer_seq if info.delivered is not None else 0
    return sent + (info.num_pending or 0)


def _prefix(bucket: str) -> str:
    return f"$KV.{bucket}."


def _entry(msg: Msg, bucket: str) -> KeyValue.Entry:
    """A message of the bucket's stream as the entry ``KeyValue.watch`` would make of it."""
    headers = msg.headers or {}
    operation = headers.get(KV_OP)
    if operation is None and _MARKER_REASON in headers:  # nats-server 2.11+: a server's marker
        operation = KV_DEL if headers[_MARKER_REASON] == "Remove" else KV_PURGE
    meta = msg.metadata
    return KeyValue.Entry(
        bucket=bucket,
        key=msg.subject[len(_prefix(bucket)) :],
        value=msg.data,
        revision=meta.sequence.stream,
        delta=meta.num_pending,
        created=meta.timestamp,  # type: ignore[arg-type]  # a datetime, as nats-py's own watch sets
        operation=operation,
    )


# records


@dataclass(slots=True)
class _Registration:
    """A node this registry put: its stamps outlive heartbeats, and a keep-alive puts it."""

    record: dict[str, Any]
    ends: float | None  # (monotonic) when its ttl runs out; None: kept alive
    registered: float
    changed: float


@dataclass(frozen=True, slots=True)
class _Node:
    """A node as the bucket holds it."""

    key: str
    revision: int
    record: dict[str, Any]
    expires: float  # the server's stamp of the last put plus the ttl
    registered: float
    changed: float


def _decode(entry: KeyValue.Entry) -> _Node | None:
    """The node of ``entry``; ``None`` for a delete marker or a value that is no record."""
    if entry.operation in _DELETED or not entry.value:
        return None
    try:
        data = orjson.loads(entry.value)
        record = data["service"]
        Service.from_dict(record)
        ttl, registered, changed = (float(data[name]) for name in ("ttl", "registered", "changed"))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        logger.warning("the registry key %s holds no registry record; left out", entry.key)
        return None
    created: object = entry.created
    put_at = created.timestamp() if isinstance(created, datetime) else time.time()
    return _Node(entry.key, entry.revision or 0, record, put_at + ttl, registered, changed)


def _merged(nodes: Iterable[_Node]) -> list[Service]:
    """One record per service and version; its newest put describes the version."""
    by_version: dict[tuple[str, str], list[_Node]] = {}
    for node in sorted(nodes, key=lambda node: (node.registered, node.key)):
        by_version.setdefault((node.record["name"], node.record["version"]), []).append(node)
    services = []
    for found in by_version.values():
        newest = max(found, key=lambda node: node.revision)
        service = Service.from_dict(newest.record)
        service.nodes = [Service.from_dict(node.record).nodes[0] for node in found]
        services.append(service)
    return services


def _single_node(service: Service, node: Node) -> Service:
    record = copy.deepcopy(service)
    record.nodes = [copy.deepcopy(node)]
    return record


def _escaped(part: str) -> str:
    if not part:
        raise ValueError("a service name, version and node id must not be empty")
    return "".join(
        char if _KEPT.fullmatch(char) else "".join(f"={byte:02X}" for byte in char.encode())
        for char in part
    )


# watching


class _Control(enum.Enum):
    RESYNC = "resync"  # reconnected: read the bucket again
    STOP = "stop"  # the registry stopped


@dataclass(frozen=True, slots=True)
class _Update:
    generation: int  # of the consumer it came from
    entry: KeyValue.Entry | None  # None: the bucket's content is all in


@dataclass(frozen=True, slots=True)
class _Expired:
    key: str
    revision: int


_Signal = _Control | _Update | _Expired


class _Following:
    """An ordered consumer of the bucket's keys feeding a watch's ``signals``: an ``_Update``
    for each entry, then one without an entry once what the bucket held when the consumer
    began is all in (counted from the consumer's info, as ``_snapshot`` counts)."""

    def __init__(self, signals: asyncio.Queue[_Signal], generation: int, bucket: str) -> None:
        self.signals = signals
        self.generation = generation
        self.bucket = bucket
        self.sub: JetStreamContext.PushSubscription | None = None
        self.received = 0
        self.initial: int | None = None  # known once the consumer's info is in
        self.all_in = False

    async def start(self, js: JetStreamContext, keys: str) -> None:
        self.sub = await _subscribe(js, self.bucket, keys, _WATCH_LINGER, self._arrived)
        try:
            self.initial = _sent_and_pending(await self.sub.consumer_info())
        except BaseException:
            await self.close()
            raise
        self._signal_when_all_in()

    async def _arrived(self, msg: Msg) -> None:
        self.signals.put_nowait(_Update(self.generation, _entry(msg, self.bucket)))
        self.received += 1
        self._signal_when_all_in()

    def _signal_when_all_in(self) -> None:
        if not self.all_in and self.initial is not None and self.received >= self.initial:
            self.all_in = True
            self.signals.put_nowait(_Update(self.generation, None))

    async def close(self) -> None:
        if self.sub is not None:
            with contextlib.suppress(*NATS_ERRORS):
                await self.sub.unsubscribe()


@dataclass(slots=True)
class _Known:
    node: _Node
    timer: asyncio.TimerHandle


class _Watch:
    """The nodes one watch knows, each with a timer that reports the end of its ttl."""

    def __init__(self, signals: asyncio.Queue[_Signal]) -> None:
        self.signals = signals
        self.known: dict[str, _Known] = {}
        self.loop = asyncio.get_running_loop()

    def apply(self, entry: KeyValue.Entry) -> Event | None:
        """The event a put or a delete makes, if any."""
        node = _decode(entry)
        if node is None or node.expires <= time.time():
            return self._forget(entry.key)
        previous = self.known.get(node.key)
        self._remember(node)
        if previous is None:
            return _event(EventType.CREATE, node)
        if previous.node.record != node.record:
            return _event(EventType.UPDATE, node)
        return None  # a heartbeat

    def reconcile(self, snapshot: dict[str, _Node], *, since: float | None) -> list[Event]:
        """What changed between the nodes known and the bucket's ``snapshot``. With ``since``
        (a watch's first read, nothing known yet), only what happened after it counts."""
        now = time.time()
        events = []
        for key in list(self.known):
            node = snapshot.get(key)
            if (node is None or node.expires <= now) and (event := self._forget(key)):
                events.append(event)
        for node in snapshot.values():
            if node.expires <= now:
                continue
            previous = self.known.get(node.key)
            self._remember(node)
            if since is not None:
                if node.registered >= since:
                    events.append(_event(EventType.CREATE, node))
                elif node.changed >= since:
                    events.append(_event(EventType.UPDATE, node))
            elif previous is None:
                events.append(_event(EventType.CREATE, node))
            elif previous.node.record != node.record:
                events.append(_event(EventType.UPDATE, node))
        return events

    def expire(self, signal: _Expired) -> Event | None:
        known = self.known.get(signal.key)
        if known is None or known.node.revision != signal.revision:
            return None  # put again or gone since
        return self._forget(signal.key)

    def check_later(self, signal: _Expired) -> None:
        known = self.known.get(signal.key)
        if known is not None and known.node.revision == signal.revision:
            known.timer = self.loop.call_later(_RETRY, self.signals.put_nowait, signal)

    def close(self) -> None:
        for known in self.known.values():
            known.timer.cancel()
        self.known.clear()

    def _remember(self, node: _Node) -> None:
        previous = self.known.get(node.key)
        if previous is not None:
            previous.timer.cancel()
        timer = self.loop.call_later(
            max(0.0, node.expires - time.time()),
            self.signals.put_nowait,
            _Expired(node.key, node.revision),
        )
        self.known[node.key] = _Known(node, timer)

    def _forget(self, key: str) -> Event | None:
        known = self.known.pop(key, None)
        if known is None:
            return None
        known.timer.cancel()
        return _event(EventType.DELETE, known.node)


def _event(type: EventType, node: _Node) -> Event:
    return Event(type, Service.from_dict(node.record))
