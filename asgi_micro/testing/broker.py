"""The broker conformance suite: broadcast, queue groups, redelivery, dead letters, the
envelope and the concurrency limit behave the same on every broker.

A backend's tests subclass ``BrokerConformance`` and say how to make its brokers::

    from asgi_micro.testing.broker import BrokerConformance


    class TestMyBroker(BrokerConformance):
        @contextlib.asynccontextmanager
        async def brokers(self) -> AsyncIterator[MakeBroker]:
            url = f"mine://127.0.0.1?namespace={uuid.uuid4().hex}"
            try:
                yield lambda source: MyBroker.from_url(url, parts=Parts(service=source))
            finally:
                ...  # remove what the namespace left on the server

``brokers`` yields a factory of fresh, unstarted brokers that share one namespace of their
own (so that two runs of the suite never see each other's events): ``make(source)`` is one
more process of the service ``source``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta

import orjson
import pytest
import pytest_asyncio

from .. import errors
from ..broker import DEAD_SUFFIX, ERROR_HEADER, Broker, Event, Redelivery
from . import until

__all__ = ["BrokerConformance", "MakeBroker", "recorder", "started", "topic"]

MakeBroker = Callable[[str], Broker]
"""``make(source)``: a new broker in the test's namespace, publishing as ``source``."""

QUICK = Redelivery(initial=0.05, maximum=0.2)


def topic() -> str:
    return f"conformance.{uuid.uuid4().hex[:12]}"


@contextlib.asynccontextmanager
async def started(make: MakeBroker, count: int, source: str = "svc") -> AsyncIterator[list[Broker]]:
    brokers = [make(f"{source}-{n}") for n in range(count)]
    try:
        for broker in brokers:
            await broker.start()
        yield brokers
    finally:
        for broker in brokers:
            await broker.stop()


def recorder(into: list[Event]) -> Callable[[Event], Awaitable[None]]:
    async def handle(event: Event) -> None:
        into.append(event)

    return handle


@pytest.mark.asyncio
class BrokerConformance:
    """Subclass it as ``Test...`` and implement ``brokers``."""

    def brokers(self) -> AbstractAsyncContextManager[MakeBroker]:
        """A factory of fresh brokers in a namespace of their own, removed on exit."""
        raise NotImplementedError(f"{type(self).__name__} must implement brokers()")

    @pytest_asyncio.fixture
    async def make_broker(self) -> AsyncIterator[MakeBroker]:
        async with self.brokers() as make:
            yield make

    async def test_broadcast_reaches_every_subscriber(self, make_broker: MakeBroker) -> None:
        name = topic()
        async with started(make_broker, 4) as [publisher, *subscribers]:
            seen: list[list[Event]] = [[] for _ in subscribers]
            for broker, events in zip(subscribers, seen, strict=True):
                await broker.subscribe(name, recorder(events))
            ids = [await publisher.publish(name, orjson.dumps({"n": n})) for n in range(20)]
            await until(lambda: all(len(events) >= 20 for events in seen), "every copy")
            await asyncio.sleep(0.2)  # and nothing more
            for events in seen:
                assert sorted(event.id for event in events) == sorted(ids)

    async def test_a_queue_group_handles_each_event_once(self, make_broker: MakeBroker) -> None:
        name = topic()
        async with started(make_broker, 4) as [publisher, *members]:
            handled: list[tuple[int, Event]] = []

            def member(number: int) -> Callable[[Event], Awaitable[None]]:
                async def handle(event: Event) -> None:
                    handled.append((number, event))

                return handle

            for number, broker in enumerate(members):
                await broker.subscribe(name, member(number), queue="workers")
            ids = [await publisher.publish(name, orjson.dumps({"n": n})) for n in range(60)]
            await until(lambda: len(handled) >= 60, "every event handled")
            await asyncio.sleep(0.3)  # no second copy comes late
            counts = collections.Counter(event.id for _, event in handled)
            assert set(counts) == set(ids)
            assert max(counts.values()) == 1, counts.most_common(3)

    async def test_a_queue_group_keeps_what_comes_while_it_has_no_member(
        self, make_broker: MakeBroker
    ) -> None:
        name = topic()
        async with started(make_broker, 3) as [publisher, first, second]:
            early: list[Event] = []
            subscription = await first.subscribe(name, recorder(early), queue="workers")
            await first.unsubscribe(subscription)
            waiting = await publisher.publish(name, b'{"n": 1}')
            later: list[Event] = []
            await second.subscribe(name, recorder(later), queue="workers")
            await until(lambda: len(later) >= 1, "the event kept for the group")
            assert [event.id for event in later] == [waiting]
            assert early == []

    async def test_a_failed_event_comes_again(self, make_broker: MakeBroker) -> None:
        name = topic()
        async with started(make_broker, 2) as [publisher, subscriber]:
            deliveries: list[int] = []

            async def flaky(event: Event) -> None:
                deliveries.append(event.deliveries)
                if event.deliveries < 2:
                    raise RuntimeError("not yet")

            await subscriber.subscribe(name, flaky, queue="workers", redelivery=QUICK)
            await publisher.publish(name, b"{}")
            await until(lambda: len(deliveries) >= 2, "the redelivery")
            await asyncio.sleep(0.3)
            assert deliveries == [1, 2]

    async def test_dead_letter_after_max_deliveries(self, make_broker: MakeBroker) -> None:
        name = topic()
        async with started(make_broker, 3) as [publisher, subscriber, watcher]:
            dead: list[Event] = []
            await watcher.subscribe(name + DEAD_SUFFIX, recorder(dead))
            attempts: list[int] = []

            async def failing(event: Event) -> None:
                attempts.append(event.deliveries)
                raise errors.ServiceUnavailable("the database is down")

            await subscriber.subscribe(
                name, failing, queue="workers", max_deliveries=3, redelivery=QUICK
            )
            event_id = await publisher.publish(
                name, b'{"name": "Ada"}', headers={"micro-tenant": "acme"}
            )
            await until(lambda: len(dead) >= 1, "the dead letter")
            await asyncio.sleep(0.3)
        assert attempts == [1, 2, 3]
        [letter] = dead
        assert letter.id == event_id
        assert letter.body == b'{"name": "Ada"}'
        assert letter.headers["ce-type"] == name  # the original envelope
        assert letter.metadata["tenant"] == "acme"
        error = orjson.loads(letter.headers[ERROR_HEADER])
        assert error["code"] == 503
        assert error["detail"] == "the database is down"

    async def test_an_event_that_does_not_decode_is_dead_at_once(
        self, make_broker: MakeBroker
    ) -> None:
        name = topic()
        async with started(make_broker, 3) as [publisher, subscriber, watcher]:
            dead: list[Event] = []
            await watcher.subscribe(name + DEAD_SUFFIX, recorder(dead))
            attempts: list[int] = []

            async def strict(event: Event) -> None:
                attempts.append(event.deliveries)
                raise errors.BadRequest("invalid JSON")

            await subscriber.subscribe(name, strict, queue="workers", redelivery=QUICK)
            await publisher.publish(name, b"{not json")
            await until(lambda: len(dead) >= 1, "the dead letter")
            await asyncio.sleep(0.3)
        assert attempts == [1]
        assert orjson.loads(dead[0].headers[ERROR_HEADER])["code"] == 400

    async def test_the_envelope_and_metadata_arrive_intact(self, make_broker: MakeBroker) -> None:
        name = topic()
        traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        async with started(make_broker, 2, source="orders") as [publisher, subscriber]:
            seen: list[Event] = []
            await subscriber.subscribe(name, recorder(seen))
            event_id = await publisher.publish(
                name,
                b"\x81\xa4name\xa3Ada",
                content_type="application/msgpack",
                headers={"micro-tenant": "acme", "traceparent": traceparent},
            )
            await until(lambda: len(seen) >= 1, "the event")
        [event] = seen
        assert event.id == event_id
        assert event.topic == name
        assert event.body == b"\x81\xa4name\xa3Ada"
        assert event.deliveries == 1
        headers = event.headers
        assert headers["ce-id"] == event_id
        assert headers["ce-source"] == "orders-0"
        assert headers["ce-type"] == name
        assert headers["ce-specversion"] == "1.0"
        sent_at = datetime.fromisoformat(headers["ce-time"])
        assert headers["ce-time"].endswith("Z")
        assert abs(datetime.now(UTC) - sent_at) < timedelta(minutes=1), headers["ce-time"]
        assert event.content_type == "application/msgpack"
        assert headers["traceparent"] == traceparent
        assert event.metadata == {"tenant": "acme"}

    async def test_concurrency_bounds_the_events_handled_at_once(
        self, make_broker: MakeBroker
    ) -> None:
        name = topic()
        async with started(make_broker, 2) as [publisher, subscriber]:
            running = 0
            most = 0
            done: list[str] = []

            async def slow(event: Event) -> None:
                nonlocal running, most
                running += 1
                most = max(most, running)
                try:
                    await asyncio.sleep(0.15)
                finally:
                    running -= 1
                done.append(event.id)

            await subscriber.subscribe(name, slow, queue="workers", concurrency=2)
            for n in range(8):
                await publisher.publish(name, orjson.dumps({"n": n}))
            await until(lambda: len(done) >= 8, "every event")
        assert most == 2
