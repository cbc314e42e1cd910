"""``nats://``: events on NATS JetStream, durable and delivered at least once.

    nats://[user:password@]host:4222[,host2:4222][?stream=MICRO_EVENTS&prefix=micro.events&...]

One stream (``stream``) stores every topic under the subject ``<prefix>.<topic>``; it covers
``<prefix>.>``, so dead letters (``<topic>.dead``) are stored beside the events and stay there
for inspection, as long as the stream keeps anything. ``start`` creates the stream if it is
missing (or adds the subjects to one that lacks them); the options of one that exists are the
operator's and are left alone. ``publish`` returns once the stream acknowledged the event
(``PubAck``); its ``Nats-Msg-Id`` is ``<topic>:<ce-id>``, so a retried publish within the
stream's duplicate window (two minutes by default) is stored once, while a dead letter, which
keeps its event's ``ce-id``, is not taken for a copy of it.

A queue group is a durable pull consumer named after the group and the topic, shared by its
members: each asks for as many events as it has free concurrency slots (``consumer.py``), and
what comes while the group has no member waits in the stream.
A broadcast subscription is a consumer of its own (``DeliverPolicy.NEW``), deleted when it
unsubscribes, and by the server after ``inactive`` seconds without a pull if its process died.
Both start at events published after they were created.

The server redelivers an event whose ack does not come within ``ack_wait``; a delivery being
handled tells it so (``in_progress``) every third of ``ack_wait``, so a slow handler keeps its
event and only a member that died (or lost its connection) gives it up. ``Subscription``
dead-letters after its ``max_deliveries``; the server stops redelivering after ``max_deliver``
(by default twice ``max_deliveries``): the deliveries beyond ours are for those that never
settled, and an event that kills every member that takes it does not circle forever.

Headers travel as NATS headers, as published; the server's own (``Nats-*``) are left out.

nats-py reconnects by itself; once it has, every pull is asked again at once (the server may
have dropped those of the old connection), a pull left unanswered past its expiry is asked
again, and a consumer that disappeared (deleted by hand, or by the server for inactivity) is
created again with the same name, from the events published after that.

Query options: ``stream`` (``MICRO_EVENTS``), ``prefix`` (``micro.events``), ``ack_wait``
(seconds, 30), ``max_deliver`` (-1 for no limit), ``inactive`` (seconds, 300), ``timeout`` (of a
publish or a JetStream API call, seconds, 5), and for a stream ``start`` creates: ``max_age``
(seconds, 604800: a week; 0 keeps events until the stream's other limits), ``replicas`` (1) and
``storage`` (``file`` or ``memory``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Self

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext, api

from asgi_micro.broker.base import Broker, Subscription, check_topic
from asgi_micro.errors import PayloadTooLarge, ServiceUnavailable

from ._connection import NATS_ERRORS, connect, parse_url
from .consumer import BROKER_ID, FETCH_WAIT, Consumer

if TYPE_CHECKING:
    from asgi_micro.plugins import Parts

__all__ = ["BROKER_ID", "FETCH_WAIT", "NATSBroker"]

logger = logging.getLogger(__name__)

_STREAM_NAME = re.compile(r"[^.*>\s]+")
_NOT_A_NAME = re.compile(r"[^A-Za-z0-9_-]+")
_STORAGE = {"file": api.StorageType.FILE, "memory": api.StorageType.MEMORY}


class NATSBroker(Broker):
    def __init__(
        self,
        *,
        servers: Sequence[str] = ("nats://127.0.0.1:4222",),
        client: Client | None = None,
        stream: str = "MICRO_EVENTS",
        prefix: str = "micro.events",
        ack_wait: float = 30.0,
        max_deliver: int | None = None,
        inactive: float = 300.0,
        timeout: float = 5.0,
        max_age: float = 7 * 24 * 3600.0,
        replicas: int = 1,
        storage: str = "file",
        source: str = "",
        url: str = "",
    ) -> None:
        if not _STREAM_NAME.fullmatch(stream):
            raise ValueError(f"a stream name has no '.', '*', '>' or spaces, got {stream!r}")
        check_topic(prefix)
        if storage not in _STORAGE:
            raise ValueError(f"storage is 'file' or 'memory', got {storage!r}")
        if ack_wait < 1 or inactive < 1 or timeout <= 0 or max_age < 0 or replicas < 1:
            raise ValueError("ack_wait and inactive are at least 1 s, timeout > 0, replicas >= 1")
        if max_deliver is not None and max_deliver != -1 and max_deliver < 1:
            raise ValueError(f"max_deliver is -1 (no limit) or at least 1, got {max_deliver}")
        self.url = url or "nats://" + ",".join(s.removeprefix("nats://") for s in servers)
        self.source = source
        self.servers = list(servers)
        self.stream = stream
        self.prefix = prefix
        self.ack_wait = ack_wait
        self.max_deliver = max_deliver
        self.inactive = inactive
        self.timeout = timeout
        self.max_age = max_age
        self.replicas = replicas
        self.storage = storage
        self._client = client  # injected: the caller connects and closes it
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._consumers: dict[Subscription, Consumer] = {}

    @classmethod
    def from_url(cls, url: str, *, parts: Parts | None = None) -> Self:
        parsed = parse_url(url, options=_OPTIONS)
        query = parsed.options
        options: dict[str, Any] = {}
        try:
            for name in ("stream", "prefix", "storage"):
                if name in query:
                    options[name] = query[name]
            for name in ("ack_wait", "inactive", "timeout", "max_age"):
                if name in query:
                    options[name] = float(query[name])
            for name in ("max_deliver", "replicas"):
                if name in query:
                    options[name] = int(query[name])
        except ValueError as exc:
            raise ValueError(f"a bad option in {url!r}: {exc}") from None
        source = parts.service if parts is not None else ""
        return cls(servers=parsed.servers, source=source, url=parsed.shown, **options)

    # lifecycle

    async def start(self) -> None:
        if self._nc is not None:
            return
        if self._client is not None:
            nc = self._client
        else:
            try:
                nc = await connect(
                    self.servers,
                    name=self.source or "asgi-micro",
                    timeout=self.timeout,
                    disconnected=self._disconnected,
                    reconnected=self._reconnected,
                )
            except NATS_ERRORS as exc:
                raise ServiceUnavailable(
                    f"cannot reach NATS at {self.url}: {exc!r}", id=BROKER_ID
                ) from exc
        js = nc.jetstream(timeout=self.timeout)
        try:
            await self._ensure_stream(js)
        except BaseException as exc:
            if self._client is None:
                await nc.close()
            if isinstance(exc, TimeoutError | nats.errors.Error):
                raise ServiceUnavailable(
                    f"no JetStream at {self.url} for the stream {self.stream}: {exc!r}",
                    id=BROKER_ID,
                ) from exc
            raise
        self._nc, self._js = nc, js

    async def stop(self) -> None:
        nc = self._nc
        if nc is None:
            return
        await asyncio.gather(*(self.unsubscribe(s) for s in list(self._consumers)))
        self._nc = self._js = None
        if self._client is None:
            await nc.close()  # sends what is buffered (the last acks) first

    async def _disconnected(self) -> None:
        if self._nc is not None:  # not our own stop
            logger.warning("disconnected from NATS (%s); nats-py reconnects", self.url)

    async def _reconnected(self) -> None:
        nc = self._nc
        logger.warning(
            "reconnected to NATS at %s",
            nc.connected_url.netloc if nc and nc.connected_url else self.url,
        )
        # the server may have dropped the pulls of the old connection: ask again now, not at
        # their expiry
        for consumer in self._consumers.values():
            consumer.reconnected()

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        subjects = self.prefix + ".>"
        try:
            info = await js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            config = api.StreamConfig(
                name=self.stream,
                subjects=[subjects],
                retention=api.RetentionPolicy.LIMITS,
                storage=_STORAGE[self.storage],
                num_replicas=self.replicas,
                max_age=self.max_age or None,
            )
            try:
                await js.add_stream(config)
                logger.info("created the JetStream stream %s for %s", self.stream, subjects)
                return
            except nats.js.errors.APIError as exc:
                try:
                    info = await js.stream_info(self.stream)  # made meanwhile by another
                except nats.js.errors.NotFoundError:
                    raise ServiceUnavailable(
                        f"cannot create the JetStream stream {self.stream} for {subjects}: "
                        f"{exc.description}",
                        id=BROKER_ID,
                    ) from exc
        present = info.config.subjects or []
        if subjects not in present and ">" not in present:
            info.config.subjects = [*present, subjects]
            await js.update_stream(info.config)
            logger.info("added %s to the JetStream stream %s", subjects, self.stream)

    # publishing

    async def publish_raw(self, topic: str, body: bytes, headers: Mapping[str, str]) -> None:
        check_topic(topic)
        js = self._started()
        wire = {name: value for name, value in headers.items() if not _nats_header(name)}
        event_id = headers.get("ce-id")
        if event_id:
            wire["Nats-Msg-Id"] = f"{topic}:{event_id}"
        try:
            await js.publish(self._subject(topic), body, headers=wire, stream=self.stream)
        except nats.errors.MaxPayloadError as exc:
            raise PayloadTooLarge(
                f"an event of {len(body)} bytes is over the NATS server's max_payload",
                id=BROKER_ID,
            ) from exc
        except nats.js.errors.NoStreamResponseError as exc:
            raise ServiceUnavailable(
                f"no JetStream stream answered for {self._subject(topic)} "
                f"(is {self.stream} there?)",
                id=BROKER_ID,
            ) from exc
        except (TimeoutError, nats.errors.Error) as exc:
            # a retry within the duplicate window is stored once
            raise ServiceUnavailable(
                f"NATS did not accept the event on {topic}: {exc!r}", id=BROKER_ID
            ) from exc

    def _subject(self, topic: str) -> str:
        return f"{self.prefix}.{topic}"

    # subscribing

    async def attach(self, subscription: Subscription) -> None:
        js = self._started()
        max_deliver = self.max_deliver or 2 * subscription.max_deliveries
        if max_deliver != -1 and max_deliver < subscription.max_deliveries:
            raise ValueError(
                f"max_deliver={max_deliver} is below the subscription's max_deliveries="
                f"{subscription.max_deliveries}: its events would never be dead-lettered"
            )
        topic, queue = subscription.topic, subscription.queue
        if queue is None:
            name = f"{_readable('broadcast', topic)}-{uuid.uuid4().hex[:16]}"
        else:
            digest = hashlib.sha256(f"{queue}\0{topic}".encode()).hexdigest()[:12]
            name = f"{_readable(queue, topic)}-{digest}"
        config = api.ConsumerConfig(
            name=name,
            durable_name=name if queue is not None else None,
            deliver_policy=api.DeliverPolicy.NEW,
            ack_policy=api.AckPolicy.EXPLICIT,
            filter_subject=self._subject(topic),
            ack_wait=self.ack_wait,
            max_deliver=max_deliver,
            # each member pulls for its free slots alone: the bound on what is out is the
            # members' concurrency, not the server's default of 1,000 for the whole group
            max_ack_pending=-1,
            inactive_threshold=self.inactive if queue is None else None,
        )
        assert self._nc is not None
        try:
            info = await (self._join(js, config) if queue else self._create(js, config))
            consumer = Consumer(
                subscription,
                config,
                nc=self._nc,
                stream=self.stream,
                prefix=self.prefix,
                ack_wait=info.config.ack_wait or self.ack_wait,
                timeout=self.timeout,
                check=self._recreate_if_gone,
            )
            await consumer.start()
        except (TimeoutError, nats.errors.Error) as exc:
            raise ServiceUnavailable(
                f"cannot subscribe to {topic} on NATS: {exc!r}", id=BROKER_ID
            ) from exc
        self._consumers[subscription] = consumer

    async def _join(self, js: JetStreamContext, config: api.ConsumerConfig) -> api.ConsumerInfo:
        """The queue group's consumer, created if missing; its ``ack_wait`` set to ours, and
        its ``max_deliver`` raised to what this member needs."""
        assert config.name is not None
        try:
            info: api.ConsumerInfo = await js.consumer_info(self.stream, config.name)
        except nats.js.errors.NotFoundError:
            return await self._create(js, config)
        present = info.config
        has = present.max_deliver if present.max_deliver not in (None, 0) else -1
        needs = config.max_deliver
        if has == -1 or (needs is not None and needs != -1 and needs <= has):
            config.max_deliver = has  # enough already: never lowered
        if present.ack_wait != config.ack_wait or config.max_deliver != has:
            try:
                info = await js.add_consumer(self.stream, config)
            except nats.js.errors.APIError as exc:
                logger.warning("kept consumer %s as it is: %s", config.name, exc.description)
        return info

    async def _create(self, js: JetStreamContext, config: api.ConsumerConfig) -> api.ConsumerInfo:
        assert config.name is not None
        try:
            return await js.add_consumer(self.stream, config)
        except nats.js.errors.NotFoundError:
            await self._ensure_stream(js)  # the stream went away
            return await js.add_consumer(self.stream, config)
        except nats.js.errors.BadRequestError:
            info: api.ConsumerInfo = await js.consumer_info(self.stream, config.name)
            return info  # created meanwhile

    async def _recreate_if_gone(self, consumer: Consumer) -> None:
        js = self._started()
        try:
            await js.consumer_info(self.stream, consumer.name)
        except nats.js.errors.NotFoundError:
            logger.warning(
                "consumer %s of %s on stream %s is gone: creating it again (it gets the "
                "events published from now on)",
                consumer.name,
                consumer.subscription.topic,
                self.stream,
            )
            await self._create(js, consumer.config)

    async def unsubscribe(self, subscription: Subscription) -> None:
        consumer = self._consumers.pop(subscription, None)
        if consumer is None:
            return
        subscription.active = False
        await consumer.close()
        await subscription.drain()
        nc = self._nc
        if nc is not None and nc.is_connected:
            with contextlib.suppress(TimeoutError, nats.errors.Error):
                await nc.flush(timeout=max(1, round(self.timeout)))  # the last acks
            if subscription.queue is None:
                # (else the server deletes it once it has been ``inactive``)
                assert self._js is not None
                with contextlib.suppress(TimeoutError, nats.errors.Error):
                    await self._js.delete_consumer(self.stream, consumer.name)

    def _started(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError(f"{self!r} is not started: await broker.start() first")
        return self._js


_OPTIONS: Final = frozenset(
    {
        "stream",
        "prefix",
        "ack_wait",
        "max_deliver",
        "inactive",
        "timeout",
        "max_age",
        "replicas",
        "storage",
    }
)


def _nats_header(name: str) -> bool:
    """``Nats-*`` headers are the server's (``Nats-Msg-Id``, ``Nats-Expected-Stream``...)."""
    return name[:5].lower() == "nats-"


def _readable(first: str, topic: str) -> str:
    return _NOT_A_NAME.sub("_", f"{first}__{topic}")[:80]
