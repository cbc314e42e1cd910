"""What ``amqp://`` adds to the conformance suite: the CloudEvents AMQP binding on the wire,
redelivery that reaches only the subscription that failed, delays that do not queue behind
each other, a subscriber killed mid-stream, and connections dropped by the server."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aio_pika
import orjson
import pytest
from asgi_micro_amqp.broker import AMQPBroker, delay_ms

import asgi_micro.broker
from asgi_micro import errors
from asgi_micro.broker import Event, Redelivery
from tests.broker.amqp_worker import CONCURRENCY
from tests.broker.backend_amqp import SERVER, Namespace, namespace
from tests.broker.rabbitmq import rabbitmq_server
from tests.helpers import IN_CI, free_port, until

ROOT = Path(__file__).resolve().parents[2]
QUICK = Redelivery(initial=0.05, maximum=0.1)
WAIT = 30.0


@pytest.fixture
async def space() -> AsyncIterator[Namespace]:
    async with namespace() as made:
        yield made


def topic() -> str:
    return f"amqp.{uuid.uuid4().hex[:12]}"


async def arrives(event_id: str, seen: list[Event], *, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if any(event.id == event_id for event in seen):
            return True
        await asyncio.sleep(0.02)
    return False


def recorder(into: list[Event]) -> Callable[[Event], Awaitable[None]]:
    async def handle(event: Event) -> None:
        into.append(event)

    return handle


def failing_once(into: list[Event]) -> Callable[[Event], Awaitable[None]]:
    async def handle(event: Event) -> None:
        into.append(event)
        if event.deliveries == 1:
            raise RuntimeError("not yet")

    return handle


def test_from_url_takes_its_options_and_leaves_the_rest_to_aio_pika() -> None:
    url = "amqp://guest:secret@127.0.0.1:5672/orders?exchange=shop&queue_type=classic&name=api&heartbeat=10"
    broker = asgi_micro.broker.from_url(url)
    assert isinstance(broker, AMQPBroker)
    assert (broker.exchange, broker.queue_type) == ("shop", "classic")
    assert broker.connection_name == "api"
    assert broker._server_url == "amqp://guest:secret@127.0.0.1:5672/orders?heartbeat=10"
    assert "secret" not in repr(broker)
    assert AMQPBroker.from_url("amqp://127.0.0.1/").queue_type == "quorum"
    with pytest.raises(ValueError, match="queue_type"):
        AMQPBroker.from_url("amqp://127.0.0.1/?queue_type=stream")


def test_delays_round_to_a_ladder_of_queues() -> None:
    assert delay_ms(0) == 0
    assert delay_ms(-1) == 0
    for seconds in (0.01, 0.05, 0.1, 0.37, 1.0, 5.0, 30.0, 3600.0):
        assert abs(delay_ms(seconds) / (seconds * 1000) - 1) < 0.19, seconds
    # Few queues: every delay from 10 ms to a minute lands in one of 26.
    assert len({delay_ms(n / 1000) for n in range(10, 60_000)}) == 26


async def test_an_unreachable_server_is_service_unavailable() -> None:
    broker = AMQPBroker(f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    with pytest.raises(errors.ServiceUnavailable, match="cannot reach RabbitMQ"):
        await broker.start()
    with pytest.raises(RuntimeError, match="not started"):
        await broker.publish("user.created", b"{}")


async def test_the_wire_is_the_cloudevents_amqp_binding(space: Namespace) -> None:
    name = topic()
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with space.make("orders") as broker:
        connection = await aio_pika.connect(SERVER)
        try:
            channel = await connection.channel()
            raw = await channel.declare_queue(exclusive=True)
            await raw.bind(space.exchange, routing_key=name)
            event_id = await broker.publish(
                name,
                b'{"name": "Ada"}',
                headers={"micro-tenant": "acme", "traceparent": traceparent},
            )
            message = await raw.get(timeout=5, fail=True)
            assert message is not None
            await message.ack()

            # What another CloudEvents AMQP producer sends, a subscriber reads as ``ce-*``.
            seen: list[Event] = []
            await broker.subscribe(name, recorder(seen))
            await (await channel.get_exchange(space.exchange)).publish(
                aio_pika.Message(
                    b"<a/>",
                    content_type="application/xml",
                    headers={
                        "cloudEvents:id": "x-1",
                        "cloudEvents:source": "/legacy",
                        "cloudEvents:type": name,
                        "cloudEvents:specversion": "1.0",
                        "micro-tenant": "acme",
                    },
                ),
                routing_key=name,
            )
            await until(lambda: len(seen) >= 1, "the foreign event")
        finally:
            await connection.close()
    assert message.message_id == event_id
    assert message.content_type == "application/json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    properties = message.headers
    assert properties["cloudEvents:id"] == event_id
    assert properties["cloudEvents:source"] == "orders"
    assert properties["cloudEvents:type"] == name
    assert properties["cloudEvents:specversion"] == "1.0"
    assert str(properties["cloudEvents:time"]).endswith("Z")
    assert properties["micro-tenant"] == "acme"
    assert properties["traceparent"] == traceparent
    assert not [key for key in properties if key.startswith("ce-") or key == "content-type"]
    [event] = seen
    assert event.id == "x-1"
    assert event.headers == {
        "ce-id": "x-1",
        "ce-source": "/legacy",
        "ce-type": name,
        "ce-specversion": "1.0",
        "micro-tenant": "acme",
        "content-type": "application/xml",
    }
    assert event.deliveries == 1


async def test_a_redelivery_reaches_only_the_subscription_that_failed(space: Namespace) -> None:
    """A group's nack comes back to that group's queue alone, and a broadcast's to that
    subscription alone, not to the topic (every other subscriber would get it twice)."""
    name = topic()
    async with space.make("publisher") as publisher, space.make("subscriber") as subscriber:
        failing_group: list[Event] = []
        other_group: list[Event] = []
        failing_broadcast: list[Event] = []
        other_broadcast: list[Event] = []
        for handler, group in [
            (failing_once(failing_group), "failing"),
            (recorder(other_group), "other"),
            (failing_once(failing_broadcast), None),
            (recorder(other_broadcast), None),
        ]:
            await subscriber.subscribe(name, handler, queue=group, redelivery=QUICK)
        event_id = await publisher.publish(name, b"{}")
        await until(
            lambda: len(failing_group) >= 2 and len(failing_broadcast) >= 2, "the redeliveries"
        )
        await asyncio.sleep(0.5)  # nothing more comes
    assert [(e.id, e.deliveries) for e in failing_group] == [(event_id, 1), (event_id, 2)]
    assert [(e.id, e.deliveries) for e in failing_broadcast] == [(event_id, 1), (event_id, 2)]
    assert [(e.id, e.deliveries) for e in other_group] == [(event_id, 1)]
    assert [(e.id, e.deliveries) for e in other_broadcast] == [(event_id, 1)]
    assert failing_group[1].headers == failing_group[0].headers  # no wire-only header leaks


async def test_a_long_delay_does_not_hold_back_a_short_one(space: Namespace) -> None:
    name = topic()
    async with space.make("publisher") as publisher, space.make("subscriber") as subscriber:
        slow: list[tuple[float, Event]] = []
        quick: list[tuple[float, Event]] = []

        def timed(into: list[tuple[float, Event]]) -> Callable[[Event], Awaitable[None]]:
            async def handle(event: Event) -> None:
                into.append((time.monotonic(), event))
                if event.deliveries == 1:
                    raise RuntimeError("not yet")

            return handle

        await subscriber.subscribe(
            name, timed(slow), queue="slow", redelivery=Redelivery(initial=3.0, maximum=3.0)
        )
        await subscriber.subscribe(
            name, timed(quick), queue="quick", redelivery=Redelivery(initial=0.1, maximum=0.1)
        )
        await publisher.publish(name, b"{}")
        await until(lambda: len(slow) >= 2 and len(quick) >= 2, "both redeliveries")
    # The slow copy waits in its queue (1.5-3 s); the quick one in another (50-100 ms).
    assert 1.2 < slow[1][0] - slow[0][0] < 4.0
    assert quick[1][0] - quick[0][0] < 1.0
    assert quick[1][0] < slow[1][0]


async def test_classic_queues_count_redeliveries_too(space: Namespace) -> None:
    name = topic()
    publisher = space.make("publisher", queue_type="classic")
    subscriber = space.make("subscriber", queue_type="classic")
    async with publisher, subscriber:
        deliveries: list[int] = []

        async def flaky(event: Event) -> None:
            deliveries.append(event.deliveries)
            if event.deliveries < 3:
                raise RuntimeError("not yet")

        await subscriber.subscribe(name, flaky, queue="workers", redelivery=QUICK)
        await publisher.publish(name, b"{}")
        await until(lambda: len(deliveries) >= 3, "two redeliveries")
        await asyncio.sleep(0.3)
    assert deliveries == [1, 2, 3]


async def test_a_group_of_another_queue_type_is_a_conflict(space: Namespace) -> None:
    name = topic()
    async with (
        space.make("classic", queue_type="classic") as classic,
        space.make("quorum") as quorum,
    ):
        await classic.subscribe(name, recorder([]), queue="workers")
        with pytest.raises(errors.Conflict, match="queue_type"):
            await quorum.subscribe(name, recorder([]), queue="workers")
        # The broker goes on.
        seen: list[Event] = []
        await quorum.subscribe(name, recorder(seen))
        await quorum.publish(name, b"{}")
        await until(lambda: len(seen) >= 1, "an event")


async def test_a_group_member_takes_no_more_than_its_concurrency(space: Namespace) -> None:
    """The prefetch is the concurrency: what one member cannot take yet, the other does."""
    name = topic()
    async with (
        space.make("publisher") as publisher,
        space.make("busy") as busy,
        space.make("idle") as idle,
    ):
        release = asyncio.Event()
        taken: list[str] = []

        async def stuck(event: Event) -> None:
            taken.append(event.id)
            await release.wait()

        handled: list[Event] = []
        await busy.subscribe(name, stuck, queue="workers", concurrency=3)
        for n in range(3):
            await publisher.publish(name, orjson.dumps({"n": n}))
        await until(lambda: len(taken) >= 3, "the busy member's three")
        await idle.subscribe(name, recorder(handled), queue="workers", concurrency=3)
        later = [await publisher.publish(name, orjson.dumps({"n": n})) for n in range(3, 10)]
        await until(lambda: len(handled) >= 7, "the rest, at the idle member")
        release.set()
    assert len(taken) == 3
    assert sorted(event.id for event in handled) == sorted(later)


# -- a subscriber killed mid-stream ---------------------------------------------------------


async def spawn_worker(url: str, name: str, group: str, record: Path) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.broker.amqp_worker",
        url,
        name,
        group,
        str(record),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), timeout=WAIT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert line == b"ready\n", line
    return process


def handled(record: Path) -> list[tuple[str, int]]:
    if not record.exists():
        return []
    lines = record.read_text().splitlines()
    return [(event_id, int(delivery)) for event_id, delivery in map(str.split, lines)]


@pytest.mark.slow
async def test_a_subscriber_killed_mid_stream_loses_nothing(
    space: Namespace, tmp_path: Path
) -> None:
    name, group, total = topic(), "workers", 1000
    space.queues.add(f"{space.exchange}.{name}.{group}")
    record = tmp_path / "handled"
    url = space.url("worker")
    workers = [await spawn_worker(url, name, group, record)]
    cleanup: list[Callable[[], object]] = []
    try:
        async with space.make("publisher") as publisher:
            published: list[str] = []

            async def stream() -> None:
                for n in range(total):
                    published.append(await publisher.publish(name, orjson.dumps({"n": n})))

            publishing = asyncio.create_task(stream())
            cleanup.append(publishing.cancel)
            await until(lambda: len(handled(record)) >= 200, "the worker's first 200")
            workers[0].send_signal(signal.SIGKILL)
            await workers[0].wait()
            killed_after = len(published)
            before_kill = len(handled(record))
            assert not publishing.done(), "the kill came after the last publish"
            await asyncio.sleep(0.5)  # published meanwhile waits in the group's queue
            workers.append(await spawn_worker(url, name, group, record))
            await asyncio.wait_for(publishing, timeout=WAIT * 2)
            await until(
                lambda: set(published) <= {event_id for event_id, _ in handled(record)},
                "every event handled",
                timeout=WAIT * 2,
            )
    finally:
        for undo in cleanup:
            undo()
        for worker in workers:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()
    records = handled(record)
    counts = collections.Counter(event_id for event_id, _ in records)
    deliveries: dict[str, list[int]] = collections.defaultdict(list)
    for event_id, delivery in records:
        deliveries[event_id].append(delivery)
    twice = [event_id for event_id, count in counts.items() if count > 1]
    print(
        f"\nkilled after {killed_after} published and {before_kill} handled; "
        f"{len(records)} handled in all, {len(twice)} twice"
    )
    assert 0 < killed_after < total
    assert set(counts) == set(published)
    # What the worker was handling when killed came again, counted as a second delivery;
    # nothing else did: the prefetch bounds what it held.
    assert 1 <= len(twice) <= CONCURRENCY, twice
    assert all(deliveries[event_id] == [1, 2] for event_id in twice)
    assert max(delivery for _, delivery in records) <= 2


class Lanes:
    """Publishing without pause on a few lanes at once, so that confirms are awaited when the
    connection goes; ``published`` holds the ids of the events accepted so far."""

    def __init__(self, publisher: AMQPBroker, name: str, lanes: int = 4, most: int = 5000) -> None:
        self.published: list[str] = []
        self.most = lanes * most
        self._enough = asyncio.Event()

        async def lane() -> None:
            for n in range(most):
                if self._enough.is_set():
                    return
                self.published.append(await publisher.publish(name, orjson.dumps({"n": n})))

        self._lanes = asyncio.gather(*(lane() for _ in range(lanes)))

    async def on_for(self, count: int, timeout: float) -> None:
        """Wait for ``count`` more accepted events, then stop the lanes."""
        resumed_at = len(self.published)
        await until(lambda: len(self.published) >= resumed_at + count, "publishing on", timeout)
        self._enough.set()
        await asyncio.wait_for(self._lanes, timeout=timeout)
        assert len(self.published) < self.most, "publishing ended before the fault"

    def cancel(self) -> None:
        self._lanes.cancel()


# -- connections dropped by the server --------------------------------------------------------


async def rabbitmqctl(*arguments: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "rabbitmqctl",
        "-q",
        *arguments,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=WAIT)
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()


async def connections_of(space: Namespace) -> dict[str, str]:
    """This test's connections: the server's process for each, by our name for it."""
    listed = await rabbitmqctl("list_connections", "name", "pid", "--no-table-headers")
    processes = dict(line.split("\t") for line in listed.splitlines() if line)
    found = orjson.loads(
        await rabbitmqctl("list_connections", "name", "client_properties", "--formatter", "json")
    )
    ours: dict[str, str] = {}
    for connection in found:
        properties = {entry[0]: entry[2] for entry in connection["client_properties"]}
        name = str(properties.get("connection_name", ""))
        if name.startswith(space.exchange) and connection["name"] in processes:
            ours[name] = processes[connection["name"]]
    return ours


@pytest.fixture
def rabbitmqctl_available() -> None:
    if shutil.which("rabbitmqctl") is None or os.geteuid() != 0:
        message = "dropping connections needs rabbitmqctl, as root"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


async def reconnected(space: Namespace, before: dict[str, str]) -> dict[str, str]:
    """This test's connections once each is back on a new server process (30 s at most)."""
    for _ in range(30):
        now = await connections_of(space)
        if now.keys() == before.keys() and not set(now.values()) & set(before.values()):
            return now
        await asyncio.sleep(0.5)
    raise AssertionError(f"not every connection came back: {now} (before: {before})")


@pytest.mark.slow
@pytest.mark.usefixtures("rabbitmqctl_available")
async def test_connections_dropped_mid_stream_lose_nothing(
    space: Namespace, caplog: pytest.LogCaptureFixture
) -> None:
    """The server closes every connection of this test (as a restart does, to the clients)
    while events are published and handled: the publisher sends again what was not
    confirmed, the group loses nothing, and the broadcast subscription resumes."""
    caplog.set_level(logging.INFO, logger="asgi_micro_amqp.broker")
    name = topic()
    async with (
        space.make("publisher") as publisher,
        space.make("grouped") as grouped,
        space.make("broadcast") as broadcast,
    ):
        in_group: list[Event] = []
        in_broadcast: list[Event] = []
        await grouped.subscribe(name, recorder(in_group), queue="workers")
        await broadcast.subscribe(name, recorder(in_broadcast))
        before = await connections_of(space)
        assert len(before) == 3, before
        publishing = Lanes(publisher, name)
        published = publishing.published
        try:
            await until(lambda: len(in_group) >= 200, "the first 200")
            dropped_after = len(published)
            await asyncio.gather(
                *(
                    rabbitmqctl("close_connection", process, "test: dropped mid-stream")
                    for process in before.values()
                )
            )
            await reconnected(space, before)
            await publishing.on_for(200, timeout=WAIT)
        finally:
            publishing.cancel()
        await until(
            lambda: set(published) <= {event.id for event in in_group}, "every event in the group"
        )

        # Broadcast is ephemeral: what came while it was reconnecting may be gone; once a
        # probe reaches it again, everything after does.
        for _ in range(60):  # 30 s at most
            probe = await publisher.publish(name, b'{"probe": true}')
            if await arrives(probe, in_broadcast, within=0.5):
                break
        else:
            raise AssertionError("the broadcast subscription did not resume")
        after = [await publisher.publish(name, orjson.dumps({"n": n})) for n in range(20)]
        await until(lambda: set(after) <= {event.id for event in in_broadcast}, "the last 20")
        await until(lambda: set(after) <= {event.id for event in in_group}, "the last 20")
    # Publishes awaiting their confirm when the connection went were sent again.
    assert any("again once reconnected" in record.message for record in caplog.records)
    # A second copy in the group is RabbitMQ's redelivery of one delivered on the dropped
    # connection (counted), or a publish sent again whose first confirm was lost (not).
    assert {event.deliveries for event in in_group} <= {1, 2}
    group_counts = collections.Counter(event.id for event in in_group)
    print(
        f"\ndropped after {dropped_after} published, {len(published)} in all; "
        f"group handled {len(in_group)} ({sum(1 for c in group_counts.values() if c > 1)} "
        f"twice); broadcast {len(in_broadcast)}"
    )


# -- the server restarted ---------------------------------------------------------------------


@pytest.mark.slow
async def test_the_server_restarted_mid_stream_loses_nothing() -> None:
    """A RabbitMQ of the test's own is stopped and started again while events are published
    to a queue group and handled: publishes wait for the server and are confirmed once it is
    back, the group's quorum queue comes back with what it held, and nothing is lost."""
    name = topic()
    async with rabbitmq_server() as server:
        space = Namespace(f"test.{uuid.uuid4().hex}", server=server.url)
        try:
            publisher, grouped = space.make("publisher"), space.make("grouped")
            await publisher.start()
            await grouped.start()
            in_group: list[Event] = []
            await grouped.subscribe(name, recorder(in_group), queue="workers")
            publishing = Lanes(publisher, name)
            published = publishing.published
            try:
                await until(lambda: len(in_group) >= 200, "the first 200", timeout=WAIT)
                restarted_after = len(published)
                await server.restart()
                await publishing.on_for(200, timeout=WAIT * 2)
            finally:
                publishing.cancel()
            await until(
                lambda: set(published) <= {event.id for event in in_group},
                "every event in the group",
                timeout=WAIT * 2,
            )
            handled_after = len({event.id for event in in_group})
        finally:
            for broker in space.made:
                await broker.stop()
    assert server.starts == 2
    assert {event.deliveries for event in in_group} <= {1, 2}
    print(
        f"\nrestarted after {restarted_after} published; {len(published)} published in all, "
        f"{handled_after} handled ({len(in_group) - handled_after} twice)"
    )
