"""What only the ``redis://`` broker does: its URL, what it keeps in the streams and groups on
the real server, trimming, a handler that runs past the reclaim time, a member that leaves or
is killed with events pending, connections that are killed and a stream that is deleted."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio
from asgi_micro_redis.broker import RedisBroker
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from asgi_micro import broker as broker_module
from asgi_micro import errors
from asgi_micro.broker import Broker, Event, Redelivery
from asgi_micro.plugins import Parts
from tests.broker.backend_redis import HOST, PORT, SERVER, delete_keys, namespace
from tests.helpers import eventually, free_port, require_server, stop_children, until

ROOT = Path(__file__).resolve().parents[2]
WAIT = 20.0
QUICK = Redelivery(initial=0.05, maximum=0.2)


async def until_async(
    check: Callable[[], Awaitable[Any]], what: str, timeout: float = WAIT
) -> None:
    await eventually(check, timeout=timeout, message=what)


@pytest.fixture
async def client() -> AsyncIterator[redis.asyncio.Redis]:
    """A client of the test's own, to look at what the broker keeps."""
    require_server("Redis", HOST, PORT)
    connection = redis.asyncio.Redis.from_url(SERVER)
    try:
        yield connection
    finally:
        await connection.aclose()


@contextlib.asynccontextmanager
async def started(**options: str) -> AsyncIterator[tuple[Callable[[str], Broker], str]]:
    """A factory of started brokers in a namespace of their own, and its key prefix."""
    require_server("Redis", HOST, PORT)
    url, prefix = namespace(**options)
    made: list[Broker] = []

    def make(source: str) -> Broker:
        broker = RedisBroker.from_url(url, parts=Parts(service=source))
        made.append(broker)
        return broker

    try:
        yield make, prefix
    finally:
        for broker in made:
            await broker.stop()
        await delete_keys(prefix)


def recorder(into: list[Event]) -> Callable[[Event], Any]:
    async def handle(event: Event) -> None:
        into.append(event)

    return handle


def topic() -> str:
    return f"redis.{uuid.uuid4().hex[:12]}"


# the URL


def test_the_url_names_the_backend_and_its_options() -> None:
    broker = broker_module.from_url(
        "redis://user:secret@127.0.0.1:6379/3?prefix=shop&maxlen=500&reclaim_idle=2.5&block=1"
        "&client_name=orders"
    )
    assert isinstance(broker, RedisBroker)
    assert (broker.prefix, broker.maxlen, broker.reclaim_idle, broker.block) == (
        "shop",
        500,
        2.5,
        1.0,
    )
    assert broker.key("user.created") == "shop:user.created"
    kwargs = broker.redis.connection_pool.connection_kwargs
    assert (kwargs["db"], kwargs["client_name"], kwargs["password"]) == (3, "orders", "secret")
    assert "secret" not in repr(broker)
    default = RedisBroker.from_url("redis://127.0.0.1:6379")
    assert (default.prefix, default.maxlen, default.reclaim_idle) == ("micro", 100_000, 30.0)
    with pytest.raises(ValueError, match="maxlen"):
        RedisBroker.from_url("redis://127.0.0.1:6379?maxlen=-1")
    with pytest.raises(ValueError, match="bad option"):
        RedisBroker.from_url("redis://127.0.0.1:6379?reclaim_idle=soon")


# what is kept on the server


async def test_an_event_is_one_entry_with_its_binary_body(client: redis.asyncio.Redis) -> None:
    name = topic()
    body = bytes(range(256)) * 4  # every byte, NUL and invalid UTF-8 included
    async with started() as (make, prefix):
        publisher, subscriber = make("shop"), make("audit")
        await publisher.start()
        await subscriber.start()
        seen: list[Event] = []
        await subscriber.subscribe(name, recorder(seen))
        event_id = await publisher.publish(
            name, body, content_type="application/octet-stream", headers={"micro-user": "ada"}
        )
        await until(lambda: len(seen) >= 1, "the event")
        [(_, fields)] = await client.xrange(f"{prefix}:{name}")
    [event] = seen
    assert event.body == body
    assert fields[b":body"] == body
    headers = {key.decode(): value.decode() for key, value in fields.items() if key != b":body"}
    assert headers == event.headers  # one field per header, under its own name
    assert headers["ce-id"] == event_id
    assert headers["content-type"] == "application/octet-stream"
    assert headers["micro-user"] == "ada"


async def test_a_queue_group_and_a_broadcast_get_what_is_published_once_they_exist(
    client: redis.asyncio.Redis,
) -> None:
    name = topic()
    async with started() as (make, prefix):
        publisher, member = make("shop"), make("billing")
        await publisher.start()
        await member.start()
        key = f"{prefix}:{name}"
        before = [await publisher.publish(name, b'{"n": %d}' % n) for n in range(3)]
        grouped: list[Event] = []
        everyone: list[Event] = []
        subscription = await member.subscribe(name, recorder(grouped), queue="billing")
        await member.subscribe(name, recorder(everyone))
        after = [await publisher.publish(name, b'{"n": %d}' % n) for n in range(3, 5)]
        await until(lambda: len(grouped) >= 2 and len(everyone) >= 2, "the events published after")
        await asyncio.sleep(0.3)
        [group] = await client.xinfo_groups(key)
        [consumer] = await client.xinfo_consumers(key, "billing")
        await member.unsubscribe(subscription)
        left = await client.xinfo_consumers(key, "billing")
        groups_after = await client.xinfo_groups(key)
        length = await client.xlen(key)
    assert [event.id for event in grouped] == after
    assert [event.id for event in everyone] == after
    assert not set(before) & {event.id for event in grouped + everyone}
    # the broadcast subscription is no group: it only reads
    assert group["name"] == b"billing"
    assert group["pending"] == 0
    assert consumer["name"].startswith(b"billing.")
    # a member that leaves with nothing pending leaves no consumer behind; the group stays
    assert left == []
    assert [g["name"] for g in groups_after] == [b"billing"]
    assert length == 5  # acked entries stay for other groups, until trimmed


async def test_streams_are_trimmed_to_about_maxlen(client: redis.asyncio.Redis) -> None:
    name = topic()
    async with started(maxlen="100") as (make, prefix):
        publisher = make("shop")
        await publisher.start()
        for n in range(1000):
            await publisher.publish(name, b'{"n": %d}' % n)
        length = await client.xlen(f"{prefix}:{name}")
    # approximate trimming drops whole nodes of the stream: about maxlen are left
    assert 100 <= length < 400, length


async def test_the_delivery_count_is_the_servers(client: redis.asyncio.Redis) -> None:
    name = topic()
    async with started() as (make, prefix):
        publisher, member = make("shop"), make("billing")
        await publisher.start()
        await member.start()
        seen: list[tuple[int, int]] = []  # (Event.deliveries, XPENDING's times delivered)

        async def flaky(event: Event) -> None:
            [pending] = await client.xpending_range(f"{prefix}:{name}", "billing", "-", "+", 1)
            seen.append((event.deliveries, pending["times_delivered"]))
            if event.deliveries < 3:
                raise RuntimeError("not yet")

        await member.subscribe(name, flaky, queue="billing", redelivery=QUICK)
        await publisher.publish(name, b"{}")
        await until(lambda: len(seen) >= 3, "the third delivery")
        await asyncio.sleep(0.3)
    assert seen == [(1, 1), (2, 2), (3, 3)]


@pytest.mark.parametrize("queue", ["billing", None])
async def test_a_nacked_event_comes_back_after_its_delay_not_after_the_read(
    queue: str | None,
) -> None:
    name = topic()
    async with started(block="5", socket_timeout="30") as (make, _):
        publisher, member = make("shop"), make("billing")
        await publisher.start()
        await member.start()
        times: list[float] = []

        async def flaky(event: Event) -> None:
            times.append(time.monotonic())
            if event.deliveries < 3:
                raise RuntimeError("not yet")

        delay = Redelivery(initial=0.1, maximum=0.1)
        await member.subscribe(name, flaky, queue=queue, redelivery=delay)
        await asyncio.sleep(0.2)  # the reader is blocked in its read (up to 5 s)
        await publisher.publish(name, b"{}")
        await until(lambda: len(times) >= 3, "the third delivery")
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # 0.05 to 0.1 s each (jitter): the reader was unblocked (CLIENT UNBLOCK) when it came due
    assert all(0.04 < gap < 1.0 for gap in gaps), gaps


async def test_a_read_waits_on_the_server_less_than_the_socket_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = topic()
    async with started(block="5", socket_timeout="1") as (make, _):
        publisher, member = make("shop"), make("billing")
        await publisher.start()
        await member.start()
        grouped: list[Event] = []
        everyone: list[Event] = []
        await member.subscribe(name, recorder(grouped), queue="billing")
        await member.subscribe(name, recorder(everyone))
        await asyncio.sleep(2.5)  # reads that found nothing, and ended before the socket timeout
        event_id = await publisher.publish(name, b"{}")
        await until(lambda: len(grouped) >= 1 and len(everyone) >= 1, "the event")
    assert [event.id for event in grouped + everyone] == [event_id, event_id]
    assert not [record for record in caplog.records if "failed" in record.getMessage()]


async def test_unsubscribing_cuts_a_blocked_read_short() -> None:
    name = topic()
    async with started(block="10", socket_timeout="30") as (make, _):
        member = make("billing")
        await member.start()
        grouped = await member.subscribe(name, recorder([]), queue="billing")
        everyone = await member.subscribe(name, recorder([]))
        await asyncio.sleep(0.3)  # both readers wait on the server, for up to 10 s
        took = []
        for subscription in (grouped, everyone):
            began = time.monotonic()
            await member.unsubscribe(subscription)
            took.append(time.monotonic() - began)
    assert max(took) < 1.0, took


async def test_a_handler_running_past_the_reclaim_time_keeps_its_event() -> None:
    name = topic()
    async with started(reclaim_idle="0.4") as (make, _):
        publisher, first, second = make("shop"), make("billing-1"), make("billing-2")
        for broker in (publisher, first, second):
            await broker.start()
        handled: list[tuple[str, Event]] = []

        def member(who: str) -> Callable[[Event], Awaitable[None]]:
            async def slow(event: Event) -> None:
                handled.append((who, event))
                await asyncio.sleep(1.5)  # almost four times the reclaim time

            return slow

        await first.subscribe(name, member("first"), queue="billing")
        await second.subscribe(name, member("second"), queue="billing")
        await publisher.publish(name, b"{}")
        await until(lambda: len(handled) >= 1, "the event")
        await asyncio.sleep(2.5)  # past its end, and a reclaim scan of both members
    assert len(handled) == 1, handled
    assert handled[0][1].deliveries == 1


async def test_a_nacked_event_goes_to_another_member_when_its_delay_ends() -> None:
    name = topic()
    async with started(reclaim_idle="5") as (make, _):
        publisher, leaving, staying = make("shop"), make("billing-1"), make("billing-2")
        for broker in (publisher, leaving, staying):
            await broker.start()
        failed: list[Event] = []

        async def failing(event: Event) -> None:
            failed.append(event)
            raise RuntimeError("shutting down")

        subscription = await leaving.subscribe(
            name, failing, queue="billing", redelivery=Redelivery(initial=0.5, maximum=0.5)
        )
        await publisher.publish(name, b"{}")
        await until(lambda: len(failed) >= 1, "the failure")
        await leaving.unsubscribe(subscription)
        left_at = time.monotonic()
        later: list[Event] = []
        await staying.subscribe(name, recorder(later), queue="billing")
        await until(lambda: len(later) >= 1, "the event on the other member")
        took = time.monotonic() - left_at
    assert [event.id for event in later] == [failed[0].id]
    assert later[0].deliveries == 2
    # its nack's delay (0.5 s) and the next scan (every 5 s / 4), not the reclaim time (5 s)
    assert took < 3.0, took


async def test_a_member_that_leaves_gives_back_what_never_reached_its_handler(
    client: redis.asyncio.Redis,
) -> None:
    name = topic()
    async with started(reclaim_idle="10") as (make, prefix):
        publisher, leaving, staying = make("shop"), make("billing-1"), make("billing-2")
        for broker in (publisher, leaving, staying):
            await broker.start()
        key = f"{prefix}:{name}"
        release = asyncio.Event()
        handled: list[Event] = []

        async def busy(event: Event) -> None:
            handled.append(event)
            await release.wait()

        subscription = await leaving.subscribe(name, busy, queue="billing", concurrency=1)
        first = await publisher.publish(name, b'{"n": 1}')
        await until(lambda: len(handled) >= 1, "the first event")
        # Its only slot is busy, so it does not read; an entry delivered to its consumer now
        # is one whose reply it never got (as when a read is cancelled on the way).
        second = await publisher.publish(name, b'{"n": 2}')
        [consumer] = await client.xinfo_consumers(key, "billing")
        lost = await client.xreadgroup("billing", consumer["name"], {key: ">"}, count=1)
        assert lost, "nothing was delivered to the leaving member"
        release.set()

        async def only_the_lost_one_pending() -> bool:
            return (await client.xpending(key, "billing"))["pending"] == 1

        await until_async(only_the_lost_one_pending, "the first event acked")
        await leaving.unsubscribe(subscription)
        left_at = time.monotonic()
        later: list[Event] = []
        await staying.subscribe(name, recorder(later), queue="billing")
        await until(lambda: len(later) >= 1, "the event on the other member")
        took = time.monotonic() - left_at
        await asyncio.sleep(0.3)
    assert [event.id for event in handled] == [first]
    assert [event.id for event in later] == [second]
    assert later[0].deliveries == 1  # it never reached a handler before
    assert took < 5.0, took  # given back at once, not after the reclaim time (10 s)


# connections and servers that go away


async def test_subscriptions_read_on_after_their_connections_are_killed(
    client: redis.asyncio.Redis,
) -> None:
    name = topic()
    client_name = f"test-{uuid.uuid4().hex[:12]}"
    async with started(client_name=client_name) as (make, _):
        publisher, subscriber = make("shop"), make("billing")
        await publisher.start()
        await subscriber.start()
        grouped: list[Event] = []
        everyone: list[Event] = []
        await subscriber.subscribe(name, recorder(grouped), queue="billing")
        await subscriber.subscribe(name, recorder(everyone))
        first = await publisher.publish(name, b'{"n": 1}')
        await until(lambda: len(grouped) >= 1 and len(everyone) >= 1, "the first event")
        ours = [c for c in await client.client_list() if c["name"] == client_name]
        assert len(ours) >= 3  # the publisher's, and one per reading subscription
        for connection in ours:
            await client.client_kill_filter(_id=connection["id"])
        second = await publisher.publish(name, b'{"n": 2}')  # reconnects
        await until(lambda: len(grouped) >= 2 and len(everyone) >= 2, "the second event")
        await asyncio.sleep(0.3)
    assert [event.id for event in grouped] == [first, second]
    assert [event.id for event in everyone] == [first, second]


async def test_an_unreachable_server_is_service_unavailable() -> None:
    port = free_port()  # nothing listens there
    # A client of the caller's, without the retries (seconds of them) a URL's client makes.
    client = redis.asyncio.Redis(port=port, retry=Retry(NoBackoff(), 0))
    broker = RedisBroker(client, url=f"redis://127.0.0.1:{port}", prefix="nowhere")
    try:
        with pytest.raises(errors.ServiceUnavailable, match="unreachable"):
            await broker.start()
        with pytest.raises(errors.ServiceUnavailable, match="could not publish"):
            await broker.publish("user.created", b"{}")
        with pytest.raises(errors.ServiceUnavailable, match="could not subscribe"):
            await broker.subscribe("user.created", recorder([]), queue="billing")
        await broker.stop()
    finally:
        await client.aclose()


async def test_a_group_whose_stream_was_deleted_is_made_again(client: redis.asyncio.Redis) -> None:
    name = topic()
    async with started(block="0.5") as (make, prefix):
        publisher, member = make("shop"), make("billing")
        await publisher.start()
        await member.start()
        seen: list[Event] = []
        await member.subscribe(name, recorder(seen), queue="billing")
        first = await publisher.publish(name, b'{"n": 1}')
        await until(lambda: len(seen) >= 1, "the first event")
        await client.delete(f"{prefix}:{name}")  # as a FLUSHDB, or a restart without persistence
        second = await publisher.publish(name, b'{"n": 2}')
        await until(lambda: len(seen) >= 2, "the event after the stream was deleted")
    assert [event.id for event in seen] == [first, second]


# a member killed while events are being published


EVENTS = 1000
KILL_AFTER = 150  # events handled


async def start_member(url: str, name: str, record: str) -> asyncio.subprocess.Process:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.broker.redis_member",
        url,
        name,
        record,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    line = await asyncio.wait_for(child.stdout.readline(), timeout=30)
    assert line == b"ready\n", f"the member exited with {await child.wait()}"
    return child


@pytest.mark.slow
async def test_every_event_is_handled_when_a_member_is_killed(
    client: redis.asyncio.Redis,
) -> None:
    url, prefix = namespace(reclaim_idle="1", block="1")
    name = "order.placed"
    key = f"{prefix}:{name}"
    record = f"{prefix}:handled"
    children: list[asyncio.subprocess.Process] = []
    handled_ids: set[bytes] = set()

    async def handled() -> int:
        return int(await client.scard(record))

    try:
        children.append(await start_member(url, name, record))
        async with RedisBroker.from_url(url, parts=Parts(service="shop")) as publisher:
            published: list[str] = []

            async def publish_all() -> None:
                for n in range(EVENTS):
                    published.append(await publisher.publish(name, orjson.dumps({"n": n})))
                    await asyncio.sleep(0.002)

            publishing = asyncio.create_task(publish_all())
            try:
                await until_async(
                    lambda: _at_least(handled, KILL_AFTER), "the first events handled"
                )
                os.kill(children[0].pid, signal.SIGKILL)
                await children[0].wait()
                published_at_kill = len(published)
                # what the killed member had taken and not acked
                [dead] = await client.xinfo_consumers(key, "workers")
                taken = await client.xpending_range(
                    key, "workers", "-", "+", 100, consumername=dead["name"]
                )
                handled_at_kill = await handled()
                children.append(await start_member(url, name, record))
            finally:
                await publishing
        await until_async(lambda: _at_least(handled, EVENTS), "every event handled", timeout=60)
        await asyncio.sleep(0.5)  # nothing more comes
        handled_ids = set(await client.smembers(record))
        counts = {k: int(v) for k, v in (await client.hgetall(f"{record}:count")).items()}
        again = set(await client.smembers(f"{record}:again"))
        taken_ids = {
            entry[1][b"ce-id"]
            for pending in taken
            for entry in await client.xrange(key, pending["message_id"], pending["message_id"])
            if entry
        }
        # the killed member's consumer is removed once it owns nothing (after 2 x reclaim + block)
        await until_async(
            lambda: _consumers_are(client, key, 1), "the dead consumer removed", timeout=15
        )
    finally:
        await stop_children(children)
        consumers_left = await client.xinfo_consumers(key, "workers")
        await delete_keys(prefix)
    assert children[0].returncode == -signal.SIGKILL
    assert children[1].returncode == 0
    assert KILL_AFTER <= handled_at_kill < published_at_kill < EVENTS  # killed mid-stream
    assert handled_ids == {event_id.encode() for event_id in published}
    # it held events when killed; another member handled them on their next delivery
    assert taken, "the killed member held no event"
    assert taken_ids <= again, taken_ids - again
    # only an event handled but not yet acknowledged at the kill is handled twice
    duplicates = sum(count - 1 for count in counts.values())
    assert duplicates <= len(taken), collections.Counter(counts).most_common(5)
    assert consumers_left == []  # the second member left cleanly
    print(
        f"killed after {handled_at_kill} handled and {published_at_kill} published; "
        f"{len(taken)} taken by it, handled again elsewhere; {duplicates} handled twice"
    )


async def _at_least(count: Callable[[], Awaitable[int]], expected: int) -> bool:
    return await count() >= expected


async def _consumers_are(client: redis.asyncio.Redis, key: str, expected: int) -> bool:
    return len(await client.xinfo_consumers(key, "workers")) == expected
