"""``amqp://``: events on RabbitMQ, through aio-pika's robust connection.

    amqp://guest:guest@127.0.0.1:5672/[vhost][?exchange=micro&queue_type=quorum&name=...]

One durable topic exchange is a broker's namespace; the routing key is the topic::

    publish("user.created") ──> exchange <exchange> (topic, durable)
        ├──> <exchange>:user.created:<hex>        broadcast: exclusive, auto-delete, one each
        └──> <exchange>.user.created.<group>      queue group: durable quorum queue, shared

    nack(delay) in a group ──> <exchange>:delay (headers exchange)
        └──> <exchange>:delay:<ms>  (TTL <ms>) ──dead-letters──> default exchange ──> the group

Publishing waits for the publisher confirm of a persistent message: the event is on disk (a
quorum queue: on a majority) in every queue bound to the topic. Each subscription consumes on a
channel of its own whose prefetch (``basic.qos``) is its concurrency, so RabbitMQ never hands
it more events than it has free slots.

Redelivery: RabbitMQ has no per-message delay, and a queue expires only its head, so a
per-message TTL would hold a short delay behind a long one. A nacked group event is therefore
republished (as a copy carrying its next delivery number) into a delay queue whose every
message has the same TTL, one per step of a ladder (10 ms x 2^(k/2): the delay rounded to
within 19%), declared on demand and expiring when unused; it dead-letters with the copy's
routing key, the group's queue name, through the default exchange, so only that group sees it
again. The copy is confirmed before the original is acked: a process that dies in between
leaves both, a duplicate, never a loss. Quorum delay queues dead-letter at least once. A
broadcast queue lives as long as its connection, so a broadcast nack keeps the copy in the
process and publishes it into its queue when the delay is over; it is exactly as durable as
the queue.

Delivery count: the copy's own number, plus what RabbitMQ counted since: a quorum queue's
``x-delivery-count`` (a consumer that died holding the event) is exact; a classic queue
(``queue_type=classic``, for a server without quorum queues) only says that it delivered the
event before, so a count there can be low after a crash, never high.

After a lost connection aio-pika reconnects and re-declares the exchanges, queues, bindings,
prefetch and consumers; a publish in flight is sent again once the channel is back (a lost
confirm may make a duplicate), and an event delivered on the old connection comes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aio_pika
from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustQueue,
)
from aiormq.exceptions import (
    AMQPError,
    ChannelInvalidStateError,
    ChannelPreconditionFailed,
    PublishError,
)

from asgi_micro.broker import Broker, Delivery, Event, Subscription
from asgi_micro.broker.base import check_topic
from asgi_micro.errors import Conflict, ServiceUnavailable

from .wire import DELAY_HEADER, event_of, message_of

if TYPE_CHECKING:
    from asgi_micro.plugins import Parts

__all__ = ["AMQPBroker", "QueueType"]

logger = logging.getLogger(__name__)

QueueType = Literal["quorum", "classic"]
DEFAULT_URL: Final = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_EXCHANGE: Final = "micro"
_OPTIONS: Final = frozenset({"exchange", "queue_type", "name", "publish_timeout"})
_LOST: Final = (AMQPError, ChannelInvalidStateError, ConnectionError, OSError)
"""What a call raises when the connection or channel went away under it."""
_STEP_MS: Final = 10
_MAX_TTL_MS: Final = 2**31 - 1  # ~25 days; with the idle time, within what RabbitMQ takes
_DELAY_QUEUE_IDLE_MS: Final = 600_000
"""A delay queue goes once unused (not declared again) this long after its TTL."""
_REDECLARE: Final = 60.0
"""How often a delay queue in use is declared again, renewing its lease (well within it)."""
_CLOSE_TIMEOUT: Final = 5.0
_RETRY_PAUSE: Final = 0.1


def delay_ms(delay: float) -> int:
    """The delay queue's TTL for ``delay`` seconds: the nearest step of 10 ms x 2^(k/2), or
    0 for none."""
    if delay <= 0:
        return 0
    step = max(0, round(2 * math.log2(delay * 1000 / _STEP_MS)))
    return min(round(_STEP_MS * 2 ** (step / 2)), _MAX_TTL_MS)


@dataclass(frozen=True, slots=True)
class _Link:
    """A started broker's connection, its publishing channel and its two exchanges."""

    connection: AbstractRobustConnection
    channel: AbstractRobustChannel
    topics: AbstractExchange
    delays: AbstractExchange


@dataclass(slots=True, eq=False)
class _Consumer:
    """One subscription's channel, queue and consumer, and what it has received."""

    subscription: Subscription
    channel: AbstractRobustChannel
    queue: AbstractRobustQueue
    inbox: asyncio.Queue[AbstractIncomingMessage] = field(default_factory=asyncio.Queue)
    tag: str = ""
    pump: asyncio.Task[None] | None = None
    later: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def broadcast(self) -> bool:
        return self.subscription.queue is None

    async def receive(self, message: AbstractIncomingMessage) -> None:
        # aio-pika calls this in a task of the channel's: only hand the message over.
        self.inbox.put_nowait(message)


class _AMQPDelivery(Delivery):
    __slots__ = ("_broker", "_consumer", "_message")

    def __init__(
        self, broker: AMQPBroker, consumer: _Consumer, message: AbstractIncomingMessage
    ) -> None:
        super().__init__(event_of(message, consumer.subscription.topic))
        self._broker = broker
        self._consumer = consumer
        self._message = message

    async def ack(self) -> None:
        try:
            await self._message.ack()
        except ChannelInvalidStateError:
            logger.info(
                "event %s on %s settled after its channel closed: it comes again",
                self.event.id,
                self.event.topic,
            )

    async def nack(self, delay: float) -> None:
        consumer = self._consumer
        if consumer.broadcast:
            self._broker._later(consumer, delay, self.event)
            await self.ack()
            return
        if _stale(self._message):
            return  # RabbitMQ took it back with the channel, counted: no copy to duplicate it
        try:
            await self._broker._delay(self.event, consumer.queue.name, delay)
        except Exception:
            logger.warning(
                "could not delay event %s on %s: requeued at once",
                self.event.id,
                self.event.topic,
                exc_info=True,
            )
            await self._message.nack(requeue=True)
            return
        await self.ack()


class AMQPBroker(Broker):
    """Events on a RabbitMQ exchange (see the module's docstring). ``url`` is the server's,
    passed to aio-pika as is (``reconnect_interval``, ``heartbeat``... in its query)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        exchange: str = DEFAULT_EXCHANGE,
        queue_type: QueueType = "quorum",
        connection_name: str | None = None,
        publish_timeout: float = 30.0,
        source: str = "",
    ) -> None:
        if not exchange:
            raise ValueError("an AMQP broker needs an exchange name")
        if queue_type not in ("quorum", "classic"):
            raise ValueError(f"queue_type is 'quorum' or 'classic', got {queue_type!r}")
        self._server_url = url
        self.url = _censored(url)
        self.exchange = exchange
        self.queue_type: QueueType = queue_type
        self.connection_name = connection_name or " ".join(
            filter(None, ["asgi-micro", source, f"pid {os.getpid()}"])
        )
        self.publish_timeout = publish_timeout
        self.source = source
        self._lock = asyncio.Lock()
        self._link: _Link | None = None
        self._consumers: dict[Subscription, _Consumer] = {}
        self._delay_queues: dict[int, float] = {}
        self._declared: set[str] = set()

    @classmethod
    def from_url(cls, url: str, *, parts: Parts | None = None) -> Self:
        split = urlsplit(url)
        query = parse_qsl(split.query, keep_blank_values=True)
        options = {name: value for name, value in query if name in _OPTIONS}
        server = urlunsplit(
            split._replace(query=urlencode([(n, v) for n, v in query if n not in _OPTIONS]))
        )
        queue_type = options.get("queue_type", "quorum")
        if queue_type not in ("quorum", "classic"):
            raise ValueError(f"queue_type is 'quorum' or 'classic', got {queue_type!r}")
        return cls(
            server,
            exchange=options.get("exchange", DEFAULT_EXCHANGE),
            queue_type="classic" if queue_type == "classic" else "quorum",
            connection_name=options.get("name") or None,
            publish_timeout=float(options.get("publish_timeout", 30.0)),
            source=parts.service if parts is not None else "",
        )

    @property
    def queues(self) -> frozenset[str]:
        """The durable queues this broker declared: its queue groups' and delay queues."""
        return frozenset(self._declared)

    async def start(self) -> None:
        async with self._lock:
            if self._link is not None:
                return
            try:
                connection = await aio_pika.connect_robust(
                    self._server_url,
                    client_properties={"connection_name": self.connection_name},
                )
            except _LOST as exc:
                raise ServiceUnavailable(f"cannot reach RabbitMQ at {self.url}: {exc}") from exc
            try:
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                topics = await channel.declare_exchange(
                    self.exchange, aio_pika.ExchangeType.TOPIC, durable=True
                )
                delays = await channel.declare_exchange(
                    f"{self.exchange}:delay", aio_pika.ExchangeType.HEADERS, durable=True
                )
            except BaseException:
                await connection.close()
                raise
            self._link = _Link(connection, channel, topics, delays)

    async def stop(self) -> None:
        async with self._lock:
            link = self._link
            if link is None:
                return
            for subscription in list(self._consumers):
                await self.unsubscribe(subscription)
            self._link = None
            self._delay_queues.clear()
            await link.connection.close()

    def _started(self) -> _Link:
        if self._link is None:
            raise RuntimeError(f"{self!r} is not started: call start() first")
        return self._link

    async def publish_raw(self, topic: str, body: bytes, headers: Mapping[str, str]) -> None:
        check_topic(topic)
        await self._confirmed(self._started().topics, message_of(headers, body), topic)

    async def _confirmed(
        self,
        exchange: AbstractExchange,
        message: aio_pika.Message,
        routing_key: str,
        *,
        mandatory: bool = False,
    ) -> None:
        """Publish and wait for RabbitMQ's confirm; when the connection goes meanwhile, wait
        for aio-pika to restore the channel and publish again (within ``publish_timeout``)."""
        channel = self._started().channel
        try:
            async with asyncio.timeout(self.publish_timeout):
                while True:
                    try:
                        await exchange.publish(message, routing_key, mandatory=mandatory)
                        return
                    except PublishError:
                        raise  # returned as unroutable: sending it again changes nothing
                    except _LOST as exc:
                        logger.info("publish on %s lost (%r): again once reconnected", self, exc)
                        await asyncio.sleep(_RETRY_PAUSE)
                        await channel.ready()
        except TimeoutError as exc:
            raise ServiceUnavailable(
                f"RabbitMQ did not confirm an event on {routing_key!r} "
                f"within {self.publish_timeout}s"
            ) from exc

    async def attach(self, subscription: Subscription) -> None:
        connection = self._started().connection
        group = subscription.queue
        if group is None:
            name = f"{self.exchange}:{subscription.topic}:{uuid.uuid4().hex}"
        else:
            name = f"{self.exchange}.{subscription.topic}.{group}"
        if len(name.encode()) > 255:
            raise ValueError(f"queue name {name!r} is longer than AMQP's 255 bytes")
        channel = await connection.channel(publisher_confirms=False)
        try:
            await channel.set_qos(prefetch_count=min(subscription.concurrency, 65535))
            if group is None:
                queue = await channel.declare_queue(name, exclusive=True, auto_delete=True)
            else:
                queue = await self._declare_group(channel, name)
            await queue.bind(self.exchange, routing_key=subscription.topic)
            consumer = _Consumer(subscription, channel, queue)
            consumer.tag = await queue.consume(consumer.receive)
        except BaseException:
            with contextlib.suppress(*_LOST):
                await channel.close()
            raise
        consumer.pump = asyncio.create_task(self._pump(consumer))
        self._consumers[subscription] = consumer

    async def _declare_group(
        self, channel: AbstractRobustChannel, name: str
    ) -> AbstractRobustQueue:
        quorum = self.queue_type == "quorum"
        arguments: dict[str, Any] | None = {"x-queue-type": "quorum"} if quorum else None
        try:
            queue = await channel.declare_queue(name, durable=True, arguments=arguments)
        except ChannelPreconditionFailed as exc:
            raise Conflict(
                f"queue {name!r} exists with other arguments than a {self.queue_type} queue's "
                f"(see queue_type): {exc}"
            ) from exc
        self._declared.add(name)
        return queue

    async def _pump(self, consumer: _Consumer) -> None:
        subscription = consumer.subscription
        while True:
            await subscription.acquire()
            try:
                message = await consumer.inbox.get()
            except BaseException:
                subscription.release()
                raise
            if _stale(message):
                subscription.release()  # its channel is gone: RabbitMQ delivers it again
                continue
            subscription.start(_AMQPDelivery(self, consumer, message))

    async def unsubscribe(self, subscription: Subscription) -> None:
        consumer = self._consumers.pop(subscription, None)
        if consumer is None:
            return
        subscription.active = False
        with contextlib.suppress(*_LOST, TimeoutError):
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await consumer.queue.cancel(consumer.tag)
        if consumer.pump is not None:
            consumer.pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer.pump
        await subscription.drain()
        for task in list(consumer.later):
            task.cancel()
        # Closing the channel gives back what was received and not handled.
        with contextlib.suppress(*_LOST, TimeoutError):
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await consumer.channel.close()

    async def _delay(self, event: Event, queue: str, delay: float) -> None:
        """Republish ``event`` as its next delivery into ``queue`` after ``delay`` seconds,
        through a delay queue; returns once RabbitMQ confirmed the copy."""
        link = self._started()
        ttl = delay_ms(delay)
        copy = message_of(event.headers, event.body, delivery=event.deliveries + 1, delay_ms=ttl)
        if not ttl:
            await self._confirmed(link.channel.default_exchange, copy, queue, mandatory=True)
            return
        await self._delay_queue(link, ttl)
        try:
            await self._confirmed(link.delays, copy, queue, mandatory=True)
        except PublishError:
            self._delay_queues.pop(ttl, None)  # gone (deleted?): declared again next time
            raise

    async def _delay_queue(self, link: _Link, ttl: int) -> None:
        declared = self._delay_queues.get(ttl)
        now = time.monotonic()
        if declared is not None and now - declared < _REDECLARE:
            return
        name = f"{self.exchange}:delay:{ttl}"
        arguments: dict[str, Any] = {
            "x-message-ttl": ttl,
            "x-dead-letter-exchange": "",
            "x-expires": ttl + _DELAY_QUEUE_IDLE_MS,
        }
        if self.queue_type == "quorum":
            arguments |= {
                "x-queue-type": "quorum",
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            }
        queue = await link.channel.declare_queue(
            name, durable=True, arguments=arguments, robust=False
        )
        await queue.bind(
            link.delays, "", arguments={"x-match": "all", DELAY_HEADER: str(ttl)}, robust=False
        )
        self._declared.add(name)
        self._delay_queues[ttl] = now

    def _later(self, consumer: _Consumer, delay: float, event: Event) -> None:
        task = asyncio.create_task(self._again(consumer.queue.name, delay, event))
        consumer.later.add(task)
        task.add_done_callback(consumer.later.discard)

    async def _again(self, queue: str, delay: float, event: Event) -> None:
        await asyncio.sleep(max(delay, 0.0))
        copy = message_of(event.headers, event.body, delivery=event.deliveries + 1)
        try:
            await self._confirmed(self._started().channel.default_exchange, copy, queue)
        except Exception:
            logger.warning("could not deliver event %s again on %s", event.id, queue, exc_info=True)

    def __repr__(self) -> str:
        return f"AMQPBroker({self.url!r}, exchange={self.exchange!r})"


def _stale(message: AbstractIncomingMessage) -> bool:
    try:
        return message.channel.is_closed
    except ChannelInvalidStateError:
        return True


def _censored(url: str) -> str:
    split = urlsplit(url)
    if split.password is None:
        return url
    host = split.netloc.rpartition("@")[2]
    return urlunsplit(split._replace(netloc=f"{split.username or ''}:***@{host}"))
