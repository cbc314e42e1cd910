"""Where the embedded broker receives: ``POST /_micro/broker/<topic>`` inside the app.

The request is one event: its headers are the event's (``ce-*``, ``content-type``,
``micro-*``, ``traceparent``...) plus ``micro-broker-delivery``, which delivery this is; the
body is the event's. ``?queue=<group>`` names the queue group it is for (none: the node's
broadcast subscriptions) and ``?node=<id>`` the node it was sent to, so that another process
that took over the address does not take it. The answer comes once the event was handled:

- ``200``: every subscription it was for handled it (or had handled it already).
- ``503`` with ``micro-broker-nack: <seconds>`` (and ``Retry-After``): a handler failed; send it
  again after that long, as the next delivery.
- ``404``: no subscription here takes it (any more): for a group, try another member.
- ``413``, ``400``: it can never be taken here.

A subscription drops an event it handled in the last ``dedup_window`` seconds (by event id, at
most ``dedup_size`` of them remembered), and an event that arrives again while it is being
handled waits for that outcome, so a retry after a lost answer is not handled twice. A
subscription runs at most ``concurrency`` events at once; more requests wait for a slot.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qs

from ..errors import BadRequest, MethodNotAllowed, MicroError, NotFound, PayloadTooLarge
from ..responses import declared_length, send_error, send_response
from ..types import Receive, Scope, Send
from .base import Delivery, Event, Subscription, check_topic
from .directory import Advertised

__all__ = ["DELIVERY_HEADER", "INBOX_PREFIX", "NACK_HEADER", "Inbox"]

INBOX_PREFIX: Final = "/_micro/broker/"
DELIVERY_HEADER: Final = "micro-broker-delivery"
NACK_HEADER: Final = "micro-broker-nack"
_NOT_EVENT_HEADERS = frozenset(
    {
        b"host",
        b"content-length",
        b"connection",
        b"transfer-encoding",
        b"expect",
        b"te",
        b"keep-alive",
        b"upgrade",
        DELIVERY_HEADER.encode(),
    }
)
_CLOSE = (b"connection", b"close")


@dataclass(frozen=True, slots=True)
class _Outcome:
    kind: str  # "ack", "nack" or "gone"
    delay: float = 0.0


_ACK = _Outcome("ack")
_GONE = _Outcome("gone")
_UNSETTLED = _Outcome("nack", 1.0)  # the subscription could not settle it (it logged why)


class _HTTPDelivery(Delivery):
    __slots__ = ("_outcome",)

    def __init__(self, event: Event, outcome: asyncio.Future[_Outcome]) -> None:
        super().__init__(event)
        self._outcome = outcome

    async def ack(self) -> None:
        if not self._outcome.done():
            self._outcome.set_result(_ACK)

    async def nack(self, delay: float) -> None:
        if not self._outcome.done():
            self._outcome.set_result(_Outcome("nack", max(delay, 0.0)))


@dataclass(slots=True, eq=False)
class _Receiver:
    """One subscription, with the events it handled lately and those it handles now."""

    subscription: Subscription
    handled: OrderedDict[str, float] = field(default_factory=OrderedDict)
    running: dict[str, asyncio.Future[_Outcome]] = field(default_factory=dict)
    closed: bool = False


class Inbox:
    """The subscriptions of one node, served as an ASGI app at ``INBOX_PREFIX``."""

    def __init__(
        self,
        *,
        node_id: Callable[[], str],
        error_id: Callable[[], str],
        max_body: Callable[[], int],
        draining: Callable[[], bool],
        dedup_window: float,
        dedup_size: int,
    ) -> None:
        self._node_id = node_id
        self._error_id = error_id
        self._max_body = max_body
        self._draining = draining
        self.dedup_window = dedup_window
        self.dedup_size = dedup_size
        self._receivers: dict[tuple[str, str | None], list[_Receiver]] = {}
        self._by_subscription: dict[Subscription, _Receiver] = {}
        self._left: set[tuple[str, str]] = set()  # queue groups this node was a member of

    @property
    def subscriptions(self) -> list[Subscription]:
        return list(self._by_subscription)

    def advertised(self) -> list[Advertised]:
        """What this node takes; groups it left, with a concurrency of 0."""
        found = [Advertised(s.topic, s.queue, s.concurrency) for s in self._by_subscription]
        found += [Advertised(topic, queue, 0) for topic, queue in sorted(self._left)]
        return found

    def add(self, subscription: Subscription) -> None:
        receiver = _Receiver(subscription)
        self._by_subscription[subscription] = receiver
        key = (subscription.topic, subscription.queue)
        self._receivers.setdefault(key, []).append(receiver)
        if subscription.queue is not None:
            self._left.discard((subscription.topic, subscription.queue))

    def close(self, subscription: Subscription, *, left: bool = True) -> bool:
        """Take no more events for ``subscription``; whether it was here. A queue group it
        was the node's last member of is advertised as left, unless not ``left`` (it never
        joined)."""
        receiver = self._by_subscription.pop(subscription, None)
        if receiver is None:
            return False
        receiver.closed = True
        subscription.active = False
        key = (subscription.topic, subscription.queue)
        receivers = self._receivers.get(key, [])
        if receiver in receivers:
            receivers.remove(receiver)
        if not receivers:
            self._receivers.pop(key, None)
            if subscription.queue is not None and left:
                self._left.add((subscription.topic, subscription.queue))
        return True

    # -- serving --------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        close = (_CLOSE,) if self._draining() else ()
        try:
            status, headers = await self._serve(scope, receive)
        except MicroError as exc:
            exc.id = exc.id or self._error_id()
            extra = (_CLOSE,) if exc.code == 413 else close
            await send_error(send, exc, headers=extra)
            return
        if status:
            await send_response(send, status, b"", headers=[*headers, *close])

    async def _serve(self, scope: Scope, receive: Receive) -> tuple[int, list[tuple[bytes, bytes]]]:
        if scope["method"] != "POST":
            raise MethodNotAllowed("events are POSTed")
        topic = scope["path"][len(INBOX_PREFIX) :]
        try:
            check_topic(topic)
        except ValueError:
            raise NotFound(f"no topic {topic!r}") from None
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        queue = query.get("queue", [None])[-1]
        node = query.get("node", [None])[-1]
        if node is not None and node != self._node_id():
            raise NotFound(f"this is node {self._node_id()}, not {node}")
        receivers = [r for r in self._receivers.get((topic, queue), ()) if not r.closed]
        if not receivers:
            group = f" for queue group {queue}" if queue is not None else ""
            raise NotFound(f"no subscription to {topic}{group} here")
        limit = self._max_body()
        declared = declared_length(scope)
        if declared is not None and declared > limit:  # refused before a byte of it is read
            raise PayloadTooLarge(f"event of {declared} bytes, over {limit}")
        body = await _read_body(receive, limit=limit)
        if body is None:
            return 0, []  # the publisher went before it sent the whole event: nobody to answer
        event = _event(topic, scope["headers"], body)
        if queue is None:
            outcomes = await asyncio.gather(*(self._deliver(r, event) for r in receivers))
        else:
            # The same member for every delivery of one event, so that dedup sees them all.
            receiver = receivers[zlib.crc32(event.id.encode()) % len(receivers)]
            outcomes = [await self._deliver(receiver, event)]
        nacks = [outcome.delay for outcome in outcomes if outcome.kind == "nack"]
        if nacks:
            delay = max(nacks)
            return 503, [
                (NACK_HEADER.encode(), f"{delay:.3f}".encode()),
                (b"retry-after", str(max(1, round(delay + 0.5))).encode()),
            ]
        if any(outcome is _GONE for outcome in outcomes):
            raise NotFound(f"the subscription to {topic} ended")
        return 200, []

    async def _deliver(self, receiver: _Receiver, event: Event) -> _Outcome:
        handled_at = receiver.handled.get(event.id)
        if handled_at is not None:
            if time.monotonic() - handled_at <= self.dedup_window:
                return _ACK
            del receiver.handled[event.id]
        running = receiver.running.get(event.id)
        if running is not None:
            return await asyncio.shield(running)
        outcome: asyncio.Future[_Outcome] = asyncio.get_running_loop().create_future()
        receiver.running[event.id] = outcome
        outcome.add_done_callback(lambda done: self._settled(receiver, event.id, done))
        subscription = receiver.subscription
        try:
            await subscription.acquire()
        except BaseException:
            outcome.set_result(_GONE)
            raise
        if receiver.closed:
            subscription.release()
            outcome.set_result(_GONE)
            return _GONE
        copy = Event(event.topic, event.id, dict(event.headers), event.body, event.deliveries)
        task = subscription.start(_HTTPDelivery(copy, outcome))

        def unsettled(_: asyncio.Task[None]) -> None:
            if not outcome.done():
                outcome.set_result(_UNSETTLED)

        task.add_done_callback(unsettled)
        return await asyncio.shield(outcome)

    def _settled(self, receiver: _Receiver, event_id: str, done: asyncio.Future[_Outcome]) -> None:
        receiver.running.pop(event_id, None)
        if done.cancelled() or done.result() is not _ACK:
            return
        handled = receiver.handled
        now = time.monotonic()
        handled[event_id] = now
        handled.move_to_end(event_id)
        while handled and (
            len(handled) > self.dedup_size or now - next(iter(handled.values())) > self.dedup_window
        ):
            handled.popitem(last=False)


async def _read_body(receive: Receive, *, limit: int) -> bytes | None:
    """The whole body; ``None`` when the client went before sending all of it (a truncated
    event must never reach a handler: it would not decode, and be dead-lettered)."""
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"event over {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _event(topic: str, raw: list[tuple[bytes, bytes]], body: bytes) -> Event:
    headers: dict[str, str] = {}
    deliveries = 1
    for name, value in raw:
        if name == b"micro-broker-delivery":
            if value.isdigit():
                deliveries = max(int(value), 1)
            continue
        if name in _NOT_EVENT_HEADERS:
            continue
        headers[name.decode("latin-1")] = value.decode("utf-8", "replace")
    event_id = headers.get("ce-id")
    if not event_id:
        raise BadRequest("an event needs a ce-id header")
    return Event(topic, event_id, headers, body, deliveries)
