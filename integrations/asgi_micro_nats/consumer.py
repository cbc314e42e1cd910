"""A subscription's JetStream pull consumer: the events it asks for, and how they are settled.

A member asks for as many events as it has free concurrency slots, never more: a slot is taken
(``Subscription.acquire``) before the event it is for is asked. The asks are pull requests sent
without waiting for their answer, each for the slots taken since the last one, to an inbox of
the member's own; the server sends each event to the inbox as soon as it has one for an open
pull, so an idle member adds no delay to a trickle, and a member with a free slot always has a
pull open. A pull stays open ``FETCH_WAIT`` seconds; the server then says how much of it was
left (``408``), and that much is asked again. Slots freed while events are still asked for are
asked for once they are half the concurrency, so a busy member sends one pull per few events.

A reconnect may lose the open pulls (the server drops a pull whose inbox it found gone), so
after one everything is asked again at once. When the consumer is deleted (``409``) and the like,
what was asked is asked again after checking that the consumer still exists (and making it
again if not); a pull that is never answered is taken for lost after ``FETCH_WAIT`` plus a second
of silence. An event that comes though nothing was asked for it (a pull the server kept across
the reconnect after all) waits for the next free slot, and goes back at once if the member
unsubscribes first.

An event is acknowledged without waiting for the server's reply (at least once: an ack lost
with the connection makes a duplicate, as a member killed before its ack does), and while it is
being handled the server hears so every third of ``ack_wait`` (``in_progress``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as Inbox
from nats.js import api

from asgi_micro.broker.base import Delivery, Event, Subscription
from asgi_micro.errors import ServiceUnavailable

__all__ = ["BROKER_ID", "FETCH_WAIT", "Consumer", "InProgress", "NATSDelivery"]

logger = logging.getLogger(__name__)

BROKER_ID: Final = "asgi_micro.broker"
"""The ``id`` of the errors the broker raises."""

FETCH_WAIT: Final = 5.0
"""How long one pull stays open on the server."""
_SILENCE: Final = FETCH_WAIT + 1.0  # pulls open, nothing heard for this long: they are lost
_WATCH_EVERY: Final = 1.0
_PAUSE: Final = 0.5  # after trouble, before asking again
_EXPIRES: Final = int(FETCH_WAIT * 1e9)
_STATUS: Final = "Status"
_TIMED_OUT: Final = "408"
_HEARTBEAT: Final = "100"
_PENDING: Final = "Nats-Pending-Messages"


class Consumer:
    """Pulls ``subscription``'s events from the consumer ``config`` names, on ``nc``."""

    def __init__(
        self,
        subscription: Subscription,
        config: api.ConsumerConfig,
        *,
        nc: Client,
        stream: str,
        prefix: str,
        ack_wait: float,
        timeout: float,
        check: Callable[[Consumer], Awaitable[None]],
    ) -> None:
        assert config.name is not None
        self.subscription = subscription
        self.config = config
        self.name = config.name
        self._nc = nc
        self._topic_at = len(prefix) + 1
        self._handling = InProgress(ack_wait / 3)
        self._timeout = timeout
        self._check = check
        self._next = f"{api.DEFAULT_PREFIX}.CONSUMER.MSG.NEXT.{stream}.{config.name}"
        self._inbox = nc.new_inbox()
        self._batch = max(1, subscription.concurrency // 2)
        self._held = 0  # slots taken for events not here yet
        self._asked = 0  # of those, asked for in pulls still open
        self._early: deque[NATSDelivery] = deque()  # came unasked: wait for a slot
        self._since = time.monotonic()  # since when pulls are open and nothing was heard
        self._reconnects = nc.stats["reconnects"]
        self._wanted = asyncio.Event()
        self._trouble = asyncio.Event()
        self._stopping = False
        self._sub: Inbox | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._inbox, cb=self._arrived)
        for loop, what in (
            (self._take_slots, "slots"),
            (self._ask_when_wanted, "pulls"),
            (self._watch, "watch"),
        ):
            self._tasks.append(asyncio.create_task(loop(), name=f"nats {what} {self.name}"))

    # taking slots and asking for events

    async def _take_slots(self) -> None:
        subscription = self.subscription
        while True:
            await subscription.acquire()
            if self._early:
                subscription.start(self._early.popleft())
                continue
            self._held += 1
            self._want()

    def _want(self) -> None:
        """Ask for the slots taken if no pull is open, or once they are worth a pull; the ask
        is made after the slots free now are all taken."""
        unasked = self._held - self._asked
        if unasked > 0 and (not self._asked or unasked >= self._batch):
            self._wanted.set()

    async def _ask_when_wanted(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            await self._ask()

    async def _ask(self) -> None:
        wanted = self._held - self._asked
        if wanted <= 0 or self._trouble.is_set() or not self._nc.is_connected:
            return  # (asked again once the trouble is over, or the connection back)
        if not self._asked:
            self._since = time.monotonic()
        self._asked += wanted
        try:
            await self._nc.publish(
                self._next,
                b'{"batch":%d,"expires":%d}' % (wanted, _EXPIRES),
                reply=self._inbox,
            )
        except nats.errors.Error as exc:
            logger.warning("cannot pull from %s: %r", self.name, exc)
            self._trouble.set()

    # what comes to the inbox

    async def _arrived(self, msg: Msg) -> None:
        self._since = time.monotonic()
        if msg.subject == self._inbox:  # from the server itself: events carry their subject
            self._answered(msg)
            return
        delivery = self._delivery(msg)
        if self._stopping:
            with contextlib.suppress(ServiceUnavailable):
                await delivery.nack(0.0)
        elif self._held:
            self._held -= 1
            if self._asked:
                self._asked -= 1
            self.subscription.start(delivery)
            if not self._asked:
                self._want()
        else:
            self._early.append(delivery)

    def _answered(self, msg: Msg) -> None:
        headers = msg.headers or {}
        status = headers.get(_STATUS)
        if status == _HEARTBEAT:
            return
        if status == _TIMED_OUT:  # a pull expired: what was left of it is asked again
            left = headers.get(_PENDING, "")
            self._asked = max(0, self._asked - int(left)) if left.isdigit() else 0
            self._want()
            return
        # 409 (consumer deleted, leadership changed...) and the like: the pulls are gone
        logger.warning("pulling from %s: %s %s", self.name, status, headers.get("Description", ""))
        self._trouble.set()

    def _delivery(self, msg: Msg) -> NATSDelivery:
        headers = msg.headers
        if headers:
            headers = {
                name: value
                for name, value in headers.items()
                if name[0] not in "Nn" or name[:5].lower() != "nats-"
            }
        else:
            headers = {}
        event = Event(
            msg.subject[self._topic_at :],
            headers.get("ce-id", ""),
            headers,
            msg.data,
            _delivered(msg.reply),
        )
        return NATSDelivery(event, msg, self._handling)

    # trouble

    async def _watch(self) -> None:
        """Asks again what the server forgot: after a reconnect, after trouble it reported,
        and when open pulls went unanswered past their expiry."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._trouble.wait(), _WATCH_EVERY)
            nc = self._nc
            self.reconnected()  # (on a client of the caller's, no callback says so)
            if not self._trouble.is_set():
                if not self._asked or time.monotonic() - self._since < _SILENCE:
                    continue
                if not nc.is_connected:
                    continue
                logger.info("no answer to the pulls of %s: asking again", self.name)
                self._trouble.set()
            self._asked = 0
            try:
                await self._check(self)
            except (TimeoutError, nats.errors.Error) as exc:
                logger.debug("cannot check consumer %s: %r", self.name, exc)
            await asyncio.sleep(_PAUSE)
            self._trouble.clear()
            self._want()

    def reconnected(self) -> None:
        """After a reconnect (once each), ask again now: the server may have dropped the pulls
        of the old connection."""
        nc = self._nc
        reconnects = nc.stats["reconnects"]
        if reconnects == self._reconnects or not nc.is_connected:
            return
        self._reconnects = reconnects
        self._asked = 0
        self._want()

    # stopping

    async def close(self) -> None:
        """Stop pulling: once the server knows the inbox is gone no pull left open can take an
        event, and what reached the inbox meanwhile goes back at once."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        sub = self._sub
        if sub is not None:
            try:
                if self._nc.is_connected:
                    # UNSUB, a round trip, then the events that came before it: nacked
                    await asyncio.wait_for(sub.drain(), self._timeout)  # type: ignore[no-untyped-call]
                else:
                    await sub.unsubscribe()
            except (TimeoutError, nats.errors.Error) as exc:
                logger.debug("could not drain the inbox of %s: %r", self.name, exc)
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
        while self._early:
            with contextlib.suppress(ServiceUnavailable):
                await self._early.popleft().nack(0.0)
        for _ in range(self._held):
            self.subscription.release()
        self._held = self._asked = 0


def _delivered(reply: str) -> int:
    """Which delivery a JetStream message is, from its ack subject: ``$JS.ACK.<stream>.
    <consumer>.<delivered>...`` (9 tokens), or with a domain and an account hash after ``ACK``."""
    tokens = reply.split(".")
    try:
        return int(tokens[4] if len(tokens) == 9 else tokens[6])
    except (IndexError, ValueError):
        return 1


class NATSDelivery(Delivery):
    """A message being handled; while it is, ``handling`` tells the server so."""

    __slots__ = ("_handling", "_msg")

    def __init__(self, event: Event, msg: Msg, handling: InProgress) -> None:
        super().__init__(event)
        self._msg = msg
        self._handling = handling
        handling.add(self)

    def touch(self) -> None:
        """Tell the server the message is still being handled: its ``ack_wait`` starts again."""
        touching = asyncio.ensure_future(self._msg.in_progress())
        touching.add_done_callback(_forget)

    async def ack(self) -> None:
        self._handling.discard(self)
        try:
            await self._msg.ack()
        except nats.errors.Error as exc:
            raise ServiceUnavailable(
                f"cannot ack {self.event.id} on NATS: {exc!r}", id=BROKER_ID
            ) from exc

    async def nack(self, delay: float) -> None:
        self._handling.discard(self)
        try:
            await self._msg.nak(delay=delay)
        except nats.errors.Error as exc:
            raise ServiceUnavailable(
                f"cannot nack {self.event.id} on NATS: {exc!r}", id=BROKER_ID
            ) from exc


class Touchable(Protocol):
    def touch(self) -> None: ...


class InProgress:
    """The deliveries of one consumer being handled, each touched (``in_progress``) once it has
    been handled for ``interval`` and every ``interval`` after, by one loop timer for them all
    that runs while there are any: a timer per delivery cost more than the rest of its
    bookkeeping. A delivery is touched at most ``interval / 2`` late."""

    __slots__ = ("_due", "_interval", "_timer")

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._due: dict[Touchable, float] = {}
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._due)

    def add(self, delivery: Touchable) -> None:
        self._due[delivery] = time.monotonic() + self._interval
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval / 2, self._tick)

    def discard(self, delivery: Touchable) -> None:
        self._due.pop(delivery, None)

    def _tick(self) -> None:
        self._timer = None
        if not self._due:
            return
        now = time.monotonic()
        for delivery, due in list(self._due.items()):
            if due <= now:
                self._due[delivery] = now + self._interval
                delivery.touch()
        self._timer = asyncio.get_running_loop().call_later(self._interval / 2, self._tick)


def _forget(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.debug("in_progress not sent: %r", future.exception())
