"""The embedded broker (``http://``): services on loopback, found in a registry, delivering
through the publisher's outbox; and, marked slow, processes killed with SIGKILL mid-stream.

The conformance suite (``backend_http.py``) covers what every broker does; here is what only
this one does: the registry record, the inbox's answers, dedup, the outbox across a restart,
copies to nodes that are gone, retries elsewhere, ``max_age``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import orjson
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from asgi_micro import Service
from asgi_micro.broker import DEAD_SUFFIX, ERROR_HEADER, Event, from_url
from asgi_micro.broker.directory import Advertised, advertise, subscriptions_of
from asgi_micro.broker.http import HTTPBroker
from asgi_micro.registry import Node
from asgi_micro.registry import Service as ServiceRecord
from asgi_micro.registry.mdns import MDNSRegistry
from asgi_micro.registry.memory import MemoryRegistry
from tests.helpers import eventually, free_port, mdns, serve

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "tests" / "broker" / "http_app.py"


class User(BaseModel):
    name: str


def topic() -> str:
    return f"http.{uuid.uuid4().hex[:12]}"


@contextlib.asynccontextmanager
async def node(
    name: str,
    registry: MemoryRegistry,
    folder: Path,
    setup: Callable[[Service], None] = lambda _: None,
    *,
    broker: str = "",
) -> AsyncIterator[Service]:
    """A service of its own, served on a free loopback port, its outbox in ``folder``."""
    port = free_port()
    service = Service(
        name,
        registry=registry,
        store="memory://",
        broker=broker or f"http://?dir={folder}",
        grpc=False,
        address=f"127.0.0.1:{port}",
    )
    setup(service)
    async with serve(FastAPI(lifespan=service.lifespan), port=port):
        await service.wait_registered()
        yield service


def dead_node(name: str, subscriptions: list[Advertised]) -> ServiceRecord:
    """A record of a node that advertises ``subscriptions`` where nothing listens."""
    return ServiceRecord(
        name=name,
        nodes=[
            Node(
                id=f"{name}-{uuid.uuid4().hex[:8]}",
                address=f"127.0.0.1:{free_port()}",
                metadata=advertise(subscriptions),
            )
        ],
    )


def publisher(registry: MemoryRegistry, path: Path, **options: float) -> HTTPBroker:
    return HTTPBroker(registry=registry, source="publisher", outbox=path, **options)  # type: ignore[arg-type]


# -- the URL -----------------------------------------------------------------------------------


def test_from_url_reads_the_options(tmp_path: Path) -> None:
    registry = MemoryRegistry()
    from asgi_micro.plugins import Parts

    broker = from_url(
        f"http://?outbox={tmp_path}/o.db&max_age=60&timeout=5&flush=0&dedup_window=1",
        parts=Parts(service="orders", registry=registry),
    )
    assert isinstance(broker, HTTPBroker)
    assert broker.registry is registry
    assert broker.source == "orders"
    assert broker.outbox_path == tmp_path / "o.db"
    assert (broker.max_age, broker.timeout, broker.flush) == (60.0, 5.0, 0.0)
    for bad in ["http://localhost:8000", "http://?max_age=soon", "http://?speed=1"]:
        with pytest.raises(ValueError, match="http://"):
            from_url(bad)


def test_subscriptions_round_trip_through_node_metadata() -> None:
    subscriptions = [
        Advertised("user.created", None, 16),
        Advertised("user.created", "greeter", 4),
        Advertised("order.paid", "billing team", 0),
    ]
    metadata = advertise(subscriptions)
    found, complete = subscriptions_of(metadata)
    assert complete
    assert sorted(found, key=str) == sorted(subscriptions, key=str)
    del metadata["broker.sub.1"]  # what a registry that cut the record short would give
    assert subscriptions_of(metadata)[1] is False


# -- services ----------------------------------------------------------------------------------


async def test_services_publish_and_subscribe_through_the_registry(tmp_path: Path) -> None:
    registry = MemoryRegistry()
    name = topic()
    audited: list[str] = []
    greeted: list[tuple[str, str]] = []

    def audit(service: Service) -> None:
        @service.subscribe(name)
        async def on_user(user: User) -> None:
            audited.append(user.name)

    def greeter(number: int) -> Callable[[Service], None]:
        def setup(service: Service) -> None:
            @service.subscribe(name, queue="greeter", concurrency=4)
            async def on_user(user: User) -> None:
                greeted.append((service.id, user.name))

        return setup

    async with (
        node("audit", registry, tmp_path, audit) as auditor,
        node("greeter", registry, tmp_path, greeter(1)),
        node("greeter", registry, tmp_path, greeter(2)),
        node("orders", registry, tmp_path) as orders,
    ):
        [record] = await registry.get_service("audit")
        assert subscriptions_of(record.nodes[0].metadata) == (
            (Advertised(name, None, 16),),
            True,
        )
        names = [f"user-{n}" for n in range(40)]
        for user in names:
            await orders.publish(name, User(name=user))
        await eventually(
            lambda: _true(len(audited) >= 40 and len(greeted) >= 40), message="every copy"
        )
        await asyncio.sleep(0.2)
        assert sorted(audited) == sorted(names)
        assert sorted(user for _, user in greeted) == sorted(names)  # each once in the group
        assert len({node for node, _ in greeted}) == 2  # spread over both members
        assert auditor.stats.requests >= 40  # counted in flight as calls
        assert await orders.broker.pending() == 0  # type: ignore[attr-defined]
        assert (tmp_path / "outbox-orders.db").exists()


async def _true(value: bool) -> bool:
    return value


def list_files(folder: Path) -> list[Path]:
    return list(folder.glob("*.db"))


async def emptied(broker: HTTPBroker) -> bool:
    return await broker.pending() == 0


async def test_a_broker_without_a_service_publishes(tmp_path: Path) -> None:
    registry = MemoryRegistry()
    name = topic()
    seen: list[Event] = []

    def setup(service: Service) -> None:
        @service.subscribe(name)
        async def on_user(user: User) -> None:
            seen.append(user)  # type: ignore[arg-type]

    async with (
        node("audit", registry, tmp_path, setup),
        publisher(registry, tmp_path / "alone.db") as alone,
    ):
        await alone.publish(name, b'{"name": "Ada"}')
        await eventually(lambda: _true(bool(seen)), message="the event")
        with pytest.raises(RuntimeError, match="served app"):
            await alone.subscribe(name, _ignore)


async def _ignore(event: Event) -> None:
    pass


async def test_a_service_without_an_app_cannot_subscribe(tmp_path: Path) -> None:
    service = Service(
        "lonely",
        registry=MemoryRegistry(),
        store="memory://",
        broker=f"http://?dir={tmp_path}",
        grpc=False,
    )

    @service.subscribe(topic())
    async def handle(user: User) -> None:
        pass

    with pytest.raises(RuntimeError, match="served app"):
        await service.start()


# -- the outbox --------------------------------------------------------------------------------


async def test_the_outbox_keeps_what_a_group_did_not_take_across_restarts(
    tmp_path: Path,
) -> None:
    registry = MemoryRegistry()
    name = topic()
    handled: list[str] = []

    def worker(service: Service) -> None:
        @service.subscribe(name, queue="workers")
        async def handle(user: User) -> None:
            handled.append(user.name)

    path = tmp_path / "publisher.db"
    async with node("worker", registry, tmp_path, worker), publisher(registry, path) as first:
        await first.publish(name, b'{"name": "before"}')
        await eventually(lambda: _true(handled == ["before"]), message="the first event")
    # Every member is gone: what is published now waits, across a restart of the publisher.
    async with publisher(registry, path, flush=0.2) as second:
        for n in range(5):
            await second.publish(name, orjson.dumps({"name": f"waiting-{n}"}))
        assert await second.pending() == 5
    async with publisher(registry, path) as third:
        assert await third.pending() == 5
        await third.publish(name, b'{"name": "after"}')  # the group is remembered
        async with node("worker", registry, tmp_path, worker):
            await eventually(lambda: _true(len(handled) >= 7), message="what waited")
            await eventually(lambda: emptied(third), message="an empty outbox")
    assert sorted(handled) == sorted(["before", "after", *(f"waiting-{n}" for n in range(5))])


async def test_two_publishers_of_one_service_in_one_directory_take_two_files(
    tmp_path: Path,
) -> None:
    registry = MemoryRegistry()
    name = topic()
    made = [HTTPBroker(registry=registry, source="orders", directory=tmp_path) for _ in range(3)]
    async with made[0], made[1]:
        registry_record = dead_node("sink", [Advertised(name, "q", 1)])
        await registry.register(registry_record)
        await made[0].publish(name, b"{}")
        await made[1].publish(name, b"{}")
        assert sorted(p.name for p in list_files(tmp_path)) == [
            "outbox-orders-2.db",
            "outbox-orders.db",
        ]
    async with made[2]:  # the first file is free again: this one resumes it
        assert await made[2].pending() == 1


# -- copies that cannot be delivered -----------------------------------------------------------


async def test_a_broadcast_copy_goes_when_its_node_goes(tmp_path: Path) -> None:
    registry = MemoryRegistry()
    name = topic()
    gone = dead_node("gone", [Advertised(name, None, 4)])
    await registry.register(gone)
    async with publisher(registry, tmp_path / "p.db") as broker:
        await broker.publish(name, b"{}")
        await asyncio.sleep(0.3)  # it fails to connect, and keeps trying
        assert await broker.pending() == 1
        await registry.deregister(gone)
        await eventually(lambda: emptied(broker), message="the copy dropped")


async def test_a_copy_for_a_group_goes_to_another_member_when_one_is_down(
    tmp_path: Path,
) -> None:
    registry = MemoryRegistry()
    name = topic()
    handled: list[str] = []

    def worker(service: Service) -> None:
        @service.subscribe(name, queue="workers")
        async def handle(user: User) -> None:
            handled.append(user.name)

    await registry.register(dead_node("worker", [Advertised(name, "workers", 16)]))
    async with (
        node("worker", registry, tmp_path, worker),
        publisher(registry, tmp_path / "p.db") as broker,
    ):
        for n in range(30):
            await broker.publish(name, orjson.dumps({"name": str(n)}))
        await eventually(lambda: _true(len(handled) >= 30), message="every event", timeout=10)
        assert sorted(handled, key=int) == [str(n) for n in range(30)]


async def test_a_copy_no_member_took_within_max_age_is_dead_lettered(tmp_path: Path) -> None:
    registry = MemoryRegistry()
    name = topic()
    dead: list[Event] = []

    def watcher(service: Service) -> None:
        @service.subscribe(name + DEAD_SUFFIX)
        async def on_dead(user: User) -> None:
            dead.append(user)  # type: ignore[arg-type]

    await registry.register(dead_node("worker", [Advertised(name, "workers", 16)]))
    async with (
        node("watcher", registry, tmp_path, watcher),
        publisher(registry, tmp_path / "p.db", max_age=0.5) as broker,
    ):
        await broker.publish(name, b'{"name": "Ada"}')
        await eventually(lambda: _true(bool(dead)), message="the dead letter", timeout=10)
        # The dead letter's own copy goes once the watcher has answered, just after its
        # handler ran: nothing is left waiting once it has.
        await eventually(lambda: emptied(broker), message="an empty outbox", timeout=10)
    assert dead == [User(name="Ada")]  # type: ignore[comparison-overlap]


async def test_a_dead_letter_keeps_the_error(tmp_path: Path) -> None:
    registry = MemoryRegistry()
    name = topic()
    await registry.register(dead_node("worker", [Advertised(name, "workers", 16)]))
    seen: list[Event] = []
    async with (
        node("watcher", registry, tmp_path) as watcher_service,
        publisher(registry, tmp_path / "p.db", max_age=0.5) as broker,
    ):
        await watcher_service.broker.subscribe(name + DEAD_SUFFIX, _recorder(seen))
        await broker.publish(name, b'{"name": "Ada"}', headers={"micro-tenant": "acme"})
        await eventually(lambda: _true(bool(seen)), message="the dead letter", timeout=10)
    [letter] = seen
    assert letter.metadata == {"tenant": "acme"}
    error = orjson.loads(letter.headers[ERROR_HEADER])
    assert error["code"] == 503
    assert "queue group workers" in error["detail"]


def _recorder(into: list[Event]) -> Callable[[Event], asyncio.Future[None]]:
    async def handle(event: Event) -> None:
        into.append(event)

    return handle  # type: ignore[return-value]


async def test_a_stopping_subscriber_finishes_what_it_handles(tmp_path: Path) -> None:
    registry = MemoryRegistry()
    name = topic()
    started, finished = asyncio.Event(), []

    def slow(service: Service) -> None:
        @service.subscribe(name, queue="workers")
        async def handle(user: User) -> None:
            started.set()
            await asyncio.sleep(0.5)
            finished.append(user.name)

    async with publisher(registry, tmp_path / "p.db") as broker:
        async with node("worker", registry, tmp_path, slow) as worker:
            await broker.publish(name, b'{"name": "Ada"}')
            await asyncio.wait_for(started.wait(), 10)
            assert worker.stats.in_flight == 1
        # The service stopped once the handler was done, and it answered that it was.
        assert finished == ["Ada"]
        await eventually(lambda: emptied(broker), message="the copy deleted")


# -- the inbox ---------------------------------------------------------------------------------


async def test_the_inbox_answers_and_drops_duplicates(tmp_path: Path) -> None:
    registry = MemoryRegistry()
    name = topic()
    calls: collections.Counter[str] = collections.Counter()
    release = asyncio.Event()

    def setup(service: Service) -> None:
        @service.subscribe(name, queue="workers")
        async def handle(user: User) -> None:
            calls[user.name] += 1
            if user.name == "slow":
                await release.wait()
            if user.name == "failing":
                raise RuntimeError("not now")

    async with node("worker", registry, tmp_path, setup) as service:
        assert service.node is not None
        base = f"http://{service.node.address}/_micro/broker/{name}"
        query = {"queue": "workers", "node": service.id}

        def headers(event_id: str) -> dict[str, str]:
            return {"ce-id": event_id, "content-type": "application/json"}

        async with httpx.AsyncClient(trust_env=False) as http:
            post = http.post
            first = await post(base, params=query, headers=headers("e1"), content=b'{"name": "a"}')
            again = await post(base, params=query, headers=headers("e1"), content=b'{"name": "a"}')
            assert (first.status_code, again.status_code) == (200, 200)
            assert calls["a"] == 1

            # Two deliveries of one event at once: the second waits for the first's outcome.
            slow = [
                asyncio.ensure_future(
                    post(base, params=query, headers=headers("e2"), content=b'{"name": "slow"}')
                )
                for _ in range(2)
            ]
            await eventually(lambda: _true(calls["slow"] == 1), message="the slow handler")
            release.set()
            assert [(await response).status_code for response in slow] == [200, 200]
            assert calls["slow"] == 1

            failed = await post(
                base,
                params=query,
                headers={**headers("e3"), "micro-broker-delivery": "1"},
                content=b'{"name": "failing"}',
            )
            assert failed.status_code == 503
            assert float(failed.headers["micro-broker-nack"]) > 0

            other_node = await post(
                base, params={**query, "node": "someone-else"}, headers=headers("e4"), content=b"{}"
            )
            other_group = await post(
                base, params={"queue": "others"}, headers=headers("e4"), content=b"{}"
            )
            no_id = await post(base, params=query, content=b"{}")
            read = await http.get(base, params=query)
        # Over the limit, declared (refused before the body is read) and chunked (refused
        # once the limit is passed). Over a socket of the test's own: a client that goes on
        # sending what the node will not read may see the connection reset before the answer.
        target = f"/_micro/broker/{name}?queue=workers&node={service.id}"
        limit = service.max_message_size
        declared = await raw_post(service.node.address, target, {"content-length": f"{5 << 20}"})
        chunk = b"%x\r\n%s\r\n" % (limit + 1, b" " * (limit + 1))
        chunked = await raw_post(
            service.node.address, target, {"transfer-encoding": "chunked"}, chunk
        )
        assert (other_node.status_code, other_group.status_code) == (404, 404)
        assert (no_id.status_code, read.status_code) == (400, 405)
        assert (declared, chunked) == (413, 413)
        assert orjson.loads(no_id.content)["id"] == "worker"


async def raw_post(address: str, target: str, headers: dict[str, str], body: bytes = b"") -> int:
    """POST an event's head (and ``body``) on a connection of its own; the answer's status."""
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        lines = [f"POST {target} HTTP/1.1", f"host: {address}", "ce-id: e5"]
        lines += ["content-type: application/json", *(f"{k}: {v}" for k, v in headers.items())]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 30)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return int(status_line.split()[1])


# -- processes ---------------------------------------------------------------------------------


class Process:
    """``asgi-micro run tests/broker/http_app.py`` in a session of its own, in ``cwd``."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd = cwd
        self.env = env
        self.port = free_port()
        self.process: asyncio.subprocess.Process | None = None
        self.log = cwd / f"node-{self.port}.log"

    async def start(self) -> None:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("MICRO_")}
        environment.update(
            MICRO_REGISTRY=os.environ["MICRO_REGISTRY"],
            MICRO_STORE="memory://",
            MICRO_BROKER="http://",  # its outbox in .micro/ under cwd, the test's own
            MICRO_REGISTER_TTL="3",
            MICRO_REGISTER_INTERVAL="1",
            **self.env,
        )
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "asgi_micro",
                "run",
                str(APP),
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                cwd=self.cwd,
                env=environment,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    async def serving(self) -> None:
        async with httpx.AsyncClient(trust_env=False) as http:

            async def up() -> bool:
                assert self.process is not None
                if self.process.returncode is not None:
                    raise AssertionError(f"node exited early:\n{self.output()}")
                with contextlib.suppress(httpx.TransportError):
                    response = await http.get(f"http://127.0.0.1:{self.port}/_micro/health")
                    return response.status_code == 200
                return False

            await eventually(up, timeout=30, interval=0.1, message="the node serving")

    def kill(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)

    async def close(self) -> None:
        if self.process is None:
            return
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGINT)
            try:
                await asyncio.wait_for(self.process.wait(), 15)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                await self.process.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def numbers(path: Path) -> list[int]:
    """The numbers a node appended to ``path``, one a line (a line cut by a kill is left out)."""
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.split("\n")
    if not text.endswith("\n"):
        lines = lines[:-1]
    return [int(line) for line in lines if line]


@contextlib.asynccontextmanager
async def processes(cwd: Path) -> AsyncIterator[Callable[[dict[str, str]], Process]]:
    started: list[Process] = []

    def make(env: dict[str, str]) -> Process:
        process = Process(cwd, env)
        started.append(process)
        return process

    try:
        yield make
    finally:
        await asyncio.gather(*(process.close() for process in started))


async def advertised(registry: MDNSRegistry, service: str, name: str) -> bool:
    for record in await registry.get_service(service):
        for found in record.nodes:
            if any(s.topic == name for s in subscriptions_of(found.metadata)[0]):
                return True
    return False


async def until_numbers(
    path: Path, wanted: set[int], *, timeout: float, describe: Callable[[], str]
) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        found = numbers(path)
        if wanted <= set(found):
            return found
        if time.monotonic() > deadline:
            missing = sorted(wanted - set(found))
            raise AssertionError(
                f"{len(missing)} of {len(wanted)} never handled (first {missing[:10]}):\n"
                + describe()
            )
        await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_a_subscriber_killed_mid_stream_misses_nothing(tmp_path: Path) -> None:
    """1,000 events to a queue group of one: its process is killed (SIGKILL) while they are
    published and started again; every event is handled at least once."""
    name = topic()
    record, accepted = tmp_path / "handled", tmp_path / "accepted"
    subscriber_env = {
        "NODE_ROLE": "subscriber",
        "NODE_SERVICE": f"sub-{uuid.uuid4().hex[:6]}",
        "NODE_TOPIC": name,
        "NODE_RECORD": str(record),
    }
    publisher_env = {
        "NODE_ROLE": "publisher",
        "NODE_SERVICE": f"pub-{uuid.uuid4().hex[:6]}",
        "NODE_TOPIC": name,
        "NODE_ACCEPTED": str(accepted),
        "NODE_COUNT": "1000",
        "NODE_INTERVAL": "0.003",
    }
    async with processes(tmp_path) as start, mdns() as registry:
        first = start(subscriber_env)
        await first.start()
        await first.serving()
        await eventually(
            lambda: advertised(registry, subscriber_env["NODE_SERVICE"], name),
            timeout=10,
            message="the subscription in the registry",
        )
        publishing = start(publisher_env)
        await publishing.start()
        await eventually(
            lambda: _true(len(numbers(record)) >= 150), timeout=30, message="events handled"
        )
        first.kill()
        await first.process.wait()  # type: ignore[union-attr]
        handled_before = len(numbers(record))
        await eventually(
            lambda: _true(len(numbers(accepted)) >= handled_before + 200),
            timeout=30,
            message="events published while the subscriber is down",
        )
        second = start(subscriber_env)
        await second.start()
        found = await until_numbers(
            record,
            set(range(1000)),
            timeout=60,
            describe=lambda: publishing.output()[-3000:] + second.output()[-3000:],
        )
        assert sorted(numbers(accepted)) == list(range(1000))
    duplicates = len(found) - len(set(found))
    print(f"handled before the kill: {handled_before}; duplicates: {duplicates}")


@pytest.mark.slow
async def test_a_publisher_killed_mid_stream_loses_nothing_it_accepted(tmp_path: Path) -> None:
    """A publisher is killed (SIGKILL) while the outbox holds events its subscriber has not
    taken yet; started again in the same directory, it delivers every event it had accepted."""
    name = topic()
    record, accepted = tmp_path / "handled", tmp_path / "accepted"
    subscriber_env = {
        "NODE_ROLE": "subscriber",
        "NODE_SERVICE": f"sub-{uuid.uuid4().hex[:6]}",
        "NODE_TOPIC": name,
        "NODE_RECORD": str(record),
        "NODE_DELAY": "0.02",
        "NODE_CONCURRENCY": "1",  # under 50 events a second: the outbox fills up
    }
    publisher_env = {
        "NODE_ROLE": "publisher",
        "NODE_SERVICE": f"pub-{uuid.uuid4().hex[:6]}",
        "NODE_TOPIC": name,
        "NODE_ACCEPTED": str(accepted),
        "NODE_COUNT": "1000",
    }
    async with processes(tmp_path) as start, mdns() as registry:
        subscriber = start(subscriber_env)
        await subscriber.start()
        await subscriber.serving()
        await eventually(
            lambda: advertised(registry, subscriber_env["NODE_SERVICE"], name),
            timeout=10,
            message="the subscription in the registry",
        )
        first = start(publisher_env)
        await first.start()
        await eventually(
            lambda: _true(len(numbers(accepted)) >= 400), timeout=30, message="events accepted"
        )
        first.kill()
        await first.process.wait()  # type: ignore[union-attr]
        taken = set(numbers(accepted))
        waiting = taken - set(numbers(record))
        assert len(waiting) >= 100, "the outbox should hold events when the publisher dies"
        second = start({**publisher_env, "NODE_FIRST": "1000"})  # publishes nothing new
        await second.start()
        found = await until_numbers(
            record,
            taken,
            timeout=60,
            describe=lambda: second.output()[-3000:] + subscriber.output()[-3000:],
        )
    print(
        f"accepted before the kill: {len(taken)}; waiting in the outbox then: {len(waiting)}; "
        f"duplicates: {len(found) - len(set(found))}"
    )
