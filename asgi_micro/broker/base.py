"""The broker interface: events published on topics, delivered at least once.

A subscription without a ``queue`` is *broadcast*: every subscribed instance gets each event. A
subscription with a ``queue`` joins that *queue group*: each event goes to exactly one member of
the group (one instance of ``greeter`` among many), and a group outlives its members, so what is
published while every member is down waits for the next one::

    publish("user.created")
        ├──> broadcast subscriber A   (every instance: its own copy)
        ├──> broadcast subscriber B
        └──> queue "greeter" ──> one of greeter-1, greeter-2, greeter-3

Delivery is at least once. A backend hands ``Subscription.deliver`` each ``Delivery``; the
policy is the same for every backend and lives here (``Subscription``): a handler that returns
acks, one that raises nacks and the event comes again after a backoff; after ``max_deliveries``
(or at once, for an event that does not decode) it is published to ``<topic>.dead`` with the
last error in its headers and acked. ``concurrency`` bounds how many events one subscription
handles at a time: a backend does not fetch more than that.

The envelope is CloudEvents 1.0 in binary mode: the attributes travel as headers (``ce-id``,
``ce-source``, ``ce-type``, ``ce-specversion``, ``ce-time``, and ``content-type`` for
``datacontenttype``), the body is the data. Metadata travels as ``micro-*`` headers, the trace
as ``traceparent``/``tracestate``, a deadline as ``micro-deadline`` (Unix milliseconds), as an
RPC's do. A backend whose binding spells the attributes otherwise (AMQP: ``cloudEvents:id``)
maps them on the wire; ``Event.headers`` always has these names.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import random
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from ..errors import BadRequest, Forbidden, MicroError, Unauthorized, UnsupportedMediaType
from ..plugins import Pluggable

__all__ = [
    "DEAD_SUFFIX",
    "DEFAULT_MAX_DELIVERIES",
    "ERROR_HEADER",
    "Broker",
    "Delivery",
    "Event",
    "Handler",
    "Redelivery",
    "Subscription",
    "envelope",
    "new_event_id",
]

logger = logging.getLogger(__name__)

SPEC_VERSION: Final = "1.0"
DEAD_SUFFIX: Final = ".dead"
ERROR_HEADER: Final = "micro-error"
"""On a dead-lettered event: the last error, as the error shape's JSON."""
DELIVERIES_HEADER: Final = "micro-deliveries"
"""On a dead-lettered event: how many times it was delivered."""
DEFAULT_MAX_DELIVERIES: Final = 5


@dataclass(slots=True)
class Event:
    """One event as a subscriber sees it: the topic, its id, headers (CloudEvents attributes,
    ``micro-*`` metadata, trace) and body, and which delivery of it this is (1 for the first)."""

    topic: str
    id: str
    headers: dict[str, str]
    body: bytes
    deliveries: int = 1

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "application/json")

    @property
    def source(self) -> str:
        return self.headers.get("ce-source", "")

    @property
    def time(self) -> str:
        return self.headers.get("ce-time", "")

    @property
    def metadata(self) -> dict[str, str]:
        """The ``micro-*`` headers, without the prefix (as a call's metadata)."""
        return {
            name[6:]: value
            for name, value in self.headers.items()
            if name.startswith("micro-") and name not in _RESERVED
        }


_RESERVED = frozenset({"micro-deadline", ERROR_HEADER, DELIVERIES_HEADER})


def new_event_id() -> str:
    """A fresh event id (``ce-id``): 128 random bits in hex."""
    return os.urandom(16).hex()


def event_time(now: float | None = None) -> str:
    """``now`` (``time.time()`` by default) as a ``ce-time``: RFC 3339 in UTC to the
    millisecond, ``2026-12-04T19:55:14.373Z``. The part up to the second is kept from the last
    call, which is most often the same second: what ``datetime`` writes, at a quarter of its
    cost per event."""
    if now is None:
        now = time.time()
    fraction, whole = math.modf(now)
    microsecond = round(fraction * 1_000_000)  # as datetime rounds it, then truncates to ms
    second = int(whole) + microsecond // 1_000_000
    millisecond = microsecond % 1_000_000 // 1000
    global _second
    cached = _second  # (one read: another thread may change it meanwhile)
    if second != cached[0]:
        cached = _second = (second, datetime.fromtimestamp(second, UTC).strftime(_SECOND))
    return f"{cached[1]}.{millisecond:03d}Z"


_SECOND: Final = "%Y-%m-%dT%H:%M:%S"
_second: tuple[int, str] = (-1, "")


def envelope(
    topic: str,
    content_type: str,
    *,
    source: str,
    headers: Mapping[str, str] | None = None,
    event_id: str | None = None,
) -> dict[str, str]:
    """The headers of a new event: its CloudEvents attributes, then ``headers`` (metadata,
    trace, deadline) under their own names."""
    out = {
        "ce-id": event_id or new_event_id(),
        "ce-source": source,
        "ce-type": topic,
        "ce-specversion": SPEC_VERSION,
        "ce-time": event_time(),
        "content-type": content_type,
    }
    if headers:
        for name, value in headers.items():
            out.setdefault(name.lower(), value)
    return out


class Delivery(ABC):
    """One delivery of an event, as a backend hands it over: the event, and how the backend
    settles it. Exactly one of ``ack`` and ``nack`` is called, once."""

    __slots__ = ("event",)

    def __init__(self, event: Event) -> None:
        self.event = event

    @abstractmethod
    async def ack(self) -> None:
        """Handled: never deliver it again."""

    @abstractmethod
    async def nack(self, delay: float) -> None:
        """Not handled: deliver it again (to this or another member) after ``delay`` seconds."""


Handler = Callable[[Event], Awaitable[None]]
"""What a subscription runs for each event; raising means not handled."""


@dataclass(frozen=True, slots=True)
class Redelivery:
    """The delay before delivery number ``n + 1`` after ``n`` failed: ``initial * 2 ** (n-1)``
    up to ``maximum``, with jitter (half to all of it)."""

    initial: float = 0.1
    maximum: float = 30.0

    def delay(self, deliveries: int) -> float:
        ceiling = min(self.maximum, self.initial * 2 ** max(deliveries - 1, 0))
        return random.uniform(ceiling / 2, ceiling)


@dataclass(slots=True, eq=False)
class Subscription:
    """A handler subscribed to a topic, with the policy every backend shares.

    ``deliver`` runs the handler on one delivery and settles it: ack when the handler returns,
    nack with the ``redelivery`` backoff when it raises, and after ``max_deliveries`` (or at
    once when the error is ``undeliverable``: the event does not decode) publish it to
    ``<topic>.dead`` and ack. At most ``concurrency`` deliveries run at once; a backend should
    not fetch more than ``free`` events ahead.
    """

    topic: str
    handler: Handler
    queue: str | None = None
    concurrency: int = 16
    max_deliveries: int = DEFAULT_MAX_DELIVERIES
    redelivery: Redelivery = field(default_factory=Redelivery)
    broker: Broker | None = None
    _slots: asyncio.Semaphore = field(init=False, repr=False)
    _running: set[asyncio.Task[None]] = field(init=False, repr=False, default_factory=set)
    active: bool = field(init=False, default=True)

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.max_deliveries < 1:
            raise ValueError(f"max_deliveries must be at least 1, got {self.max_deliveries}")
        if self.queue is not None and not self.queue:
            raise ValueError("a queue group needs a name (or None for broadcast)")
        self._slots = asyncio.Semaphore(self.concurrency)

    @property
    def dead_topic(self) -> str:
        return self.topic + DEAD_SUFFIX

    async def acquire(self) -> None:
        """Wait for a free slot; the backend then fetches one event and calls ``start``."""
        await self._slots.acquire()

    def release(self) -> None:
        """Give back a slot taken with ``acquire`` that no delivery used."""
        self._slots.release()

    def start(self, delivery: Delivery) -> asyncio.Task[None]:
        """Handle ``delivery`` in a task of its own, in a slot taken with ``acquire``."""
        task = asyncio.create_task(self._settle(delivery))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return task

    async def deliver(self, delivery: Delivery) -> None:
        """Handle ``delivery`` now, waiting for a slot first."""
        await self.acquire()
        await self._settle(delivery)

    async def _settle(self, delivery: Delivery) -> None:
        event = delivery.event
        try:
            try:
                await self.handler(event)
            except asyncio.CancelledError:
                # Stopping: not handled; it comes again, here or elsewhere.
                await asyncio.shield(delivery.nack(0.0))
                raise
            except Exception as exc:
                await self._failed(delivery, exc)
            else:
                await delivery.ack()
        except asyncio.CancelledError:
            raise
        except Exception:
            # The backend could not settle it (a lost connection): it comes again.
            logger.warning("could not settle event %s on %s", event.id, self.topic, exc_info=True)
        finally:
            self._slots.release()

    async def _failed(self, delivery: Delivery, exc: Exception) -> None:
        event = delivery.event
        if undeliverable(exc) or event.deliveries >= self.max_deliveries:
            error = exc if isinstance(exc, MicroError) else MicroError(str(exc) or repr(exc))
            await self._dead_letter(event, error)
            await delivery.ack()
            return
        logger.info(
            "event %s on %s failed (delivery %d of %d): %r",
            event.id,
            self.topic,
            event.deliveries,
            self.max_deliveries,
            exc,
        )
        await delivery.nack(self.redelivery.delay(event.deliveries))

    async def _dead_letter(self, event: Event, error: MicroError) -> None:
        if self.broker is None:
            raise RuntimeError("a subscription dead-letters through its broker: none was set")
        headers = dict(event.headers)
        headers[ERROR_HEADER] = error.to_json().decode()
        headers[DELIVERIES_HEADER] = str(event.deliveries)
        logger.warning(
            "event %s on %s dead-lettered to %s after %d deliveries: %s",
            event.id,
            self.topic,
            self.dead_topic,
            event.deliveries,
            error.detail,
        )
        await self.broker.publish_raw(self.dead_topic, event.body, headers)

    async def drain(self) -> None:
        """Wait for the deliveries running now."""
        while self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)

    async def cancel(self) -> None:
        """Stop the deliveries running now (they are nacked, and come again)."""
        for task in list(self._running):
            task.cancel()
        await self.drain()


class Broker(Pluggable):
    """Publishes events and runs subscriptions.

    ``publish`` returns once the broker has *accepted* the event: it is durable (a server
    acknowledged it, or it is in the embedded broker's outbox), so it will be delivered to
    every subscription that exists at that time (and to queue groups that exist at all) even
    if this process stops. ``subscribe`` returns once the subscription is in place: an event
    published after it returns reaches it. Lifecycle: ``start``/``stop`` or ``async with``;
    nothing connects in ``__init__``. ``stop`` ends the subscriptions after the deliveries
    running now (``drain``).
    """

    source: str = ""
    """The ``ce-source`` of what this broker publishes: the service's name."""

    async def start(self) -> None:
        """Connect; called again it does nothing."""

    async def stop(self) -> None:
        """Drain the subscriptions, then close; called again it does nothing."""

    async def publish(
        self,
        topic: str,
        body: bytes,
        *,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
        event_id: str | None = None,
    ) -> str:
        """Publish ``body`` on ``topic`` in a new envelope; returns the event's id once the
        broker has accepted it."""
        check_topic(topic)
        envelope_headers = envelope(
            topic, content_type, source=self.source, headers=headers, event_id=event_id
        )
        await self.publish_raw(topic, body, envelope_headers)
        return envelope_headers["ce-id"]

    @abstractmethod
    async def publish_raw(self, topic: str, body: bytes, headers: Mapping[str, str]) -> None:
        """Publish an event whose headers are complete (``ce-id`` included): as ``publish``,
        and for dead letters, which keep the original's envelope."""

    async def subscribe(
        self,
        topic: str,
        handler: Handler,
        *,
        queue: str | None = None,
        concurrency: int = 16,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        redelivery: Redelivery | None = None,
    ) -> Subscription:
        """Run ``handler`` for each event on ``topic`` (see the module's docstring)."""
        check_topic(topic)
        subscription = Subscription(
            topic,
            handler,
            queue=queue,
            concurrency=concurrency,
            max_deliveries=max_deliveries,
            redelivery=redelivery or Redelivery(),
            broker=self,
        )
        await self.attach(subscription)
        return subscription

    @abstractmethod
    async def attach(self, subscription: Subscription) -> None:
        """Start delivering to ``subscription``; return once it is in place."""

    @abstractmethod
    async def unsubscribe(self, subscription: Subscription) -> None:
        """Stop delivering to ``subscription`` after the deliveries running now. A queue
        group stays: what is published meanwhile waits for its next member."""


def undeliverable(error: BaseException) -> bool:
    """Whether ``error`` says the event itself cannot be handled, however often it comes: it
    does not decode (400, 415), auth refused it (401, 403: its token does not change; the dead
    letter keeps it for a replay once the rules do), or it was marked so
    (``error.undeliverable = True``, as for an event that arrived after its deadline)."""
    return isinstance(error, BadRequest | UnsupportedMediaType | Unauthorized | Forbidden) or bool(
        getattr(error, "undeliverable", False)
    )


_TOPIC = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")


@functools.lru_cache(maxsize=1024)
def check_topic(topic: str) -> None:
    """A topic is dot-separated words of letters, digits, ``_`` and ``-``: what every backend
    can carry in a subject, a stream key and a routing key alike."""
    if len(topic) > 200 or not _TOPIC.fullmatch(topic):
        raise ValueError(
            f"a topic is dot-separated words of letters, digits, '_' and '-', got {topic!r}"
        )


def deadline_header(deadline: float | None) -> dict[str, str]:
    """``micro-deadline`` for a deadline in ``time.monotonic()`` seconds (none: ``{}``)."""
    if deadline is None:
        return {}
    return {"micro-deadline": str(int((time.time() + deadline - time.monotonic()) * 1000))}


def deadline_of(event: Event) -> float | None:
    """An event's ``micro-deadline`` in ``time.monotonic()`` seconds, or ``None``."""
    value = event.headers.get("micro-deadline")
    if value is None:
        return None
    try:
        wall = int(value) / 1000
    except ValueError:
        return None
    return time.monotonic() + wall - time.time()


def headers_of(context_headers: list[tuple[str, str]]) -> dict[str, Any]:
    """A call context's outgoing headers (``Context.headers()``) as event headers: its
    metadata and trace; the deadline travels as ``micro-deadline`` instead."""
    return {name: value for name, value in context_headers if name != "micro-timeout"}
