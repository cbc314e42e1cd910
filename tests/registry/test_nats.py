"""The ``nats://`` registry on the real JetStream server: the conformance suite, then what only
it does (its URL, its keys, the bucket it makes, expiry with no server-side TTL, a watch that
misses nothing while subscribing, a restarted server, a service found through it)."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import nats.js.errors
import orjson
import pytest
from asgi_micro_nats.registry import DEFAULT_BUCKET, KEEP_ALIVE_TTL, NATSRegistry, node_key
from fastapi import FastAPI
from nats.aio.client import Client
from nats.js.kv import KeyValue
from pydantic import BaseModel

from asgi_micro import MicroRouter, Service, errors
from asgi_micro import registry as registry_module
from asgi_micro.plugins import Parts
from asgi_micro.registry import Event, EventType, Registry
from asgi_micro.testing.registry import RegistryConformance, make_service, node_ids, unique
from tests.helpers import eventually, free_port, require_server, serve, until
from tests.nats import nats_server, wait_for_port

HOST, PORT = "127.0.0.1", 4222
SERVER = f"nats://{HOST}:{PORT}"


def new_bucket() -> str:
    return f"test-registry-{uuid.uuid4().hex[:12]}"


async def delete_bucket(bucket: str, server: str = SERVER) -> None:
    nc = await nats.connect(server)
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await nc.jetstream().delete_key_value(bucket)
    finally:
        await nc.close()


class TestNATS(RegistryConformance):
    @contextlib.asynccontextmanager
    async def pair(self) -> AsyncIterator[tuple[Registry, Registry]]:
        """Two connections on a bucket of the test's own, deleted afterwards."""
        require_server("NATS", HOST, PORT)
        bucket = new_bucket()
        try:
            async with (
                NATSRegistry(servers=[SERVER], bucket=bucket) as registry,
                NATSRegistry(servers=[SERVER], bucket=bucket) as observer,
            ):
                yield registry, observer
        finally:
            await delete_bucket(bucket)


@pytest.fixture
async def bucket() -> AsyncIterator[str]:
    require_server("NATS", HOST, PORT)
    name = new_bucket()
    try:
        yield name
    finally:
        await delete_bucket(name)


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    require_server("NATS", HOST, PORT)
    nc = await nats.connect(SERVER)
    try:
        yield nc
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def opened(bucket: str, count: int = 2) -> AsyncIterator[list[NATSRegistry]]:
    registries = [NATSRegistry(servers=[SERVER], bucket=bucket) for _ in range(count)]
    try:
        for registry in registries:
            await registry.start()
        yield registries
    finally:
        for registry in registries:
            await registry.stop()


async def kv_of(client: Client, bucket: str) -> KeyValue:
    return await client.jetstream().key_value(bucket)


# the URL


def test_the_url_and_its_options() -> None:
    registry = NATSRegistry.from_url(
        "nats://ada:secret@10.0.0.1:4222,10.0.0.2:4223?bucket=shop&timeout=2&max_age=0"
        "&replicas=3&storage=memory",
        parts=Parts(service="orders"),
    )
    assert registry.servers == [
        "nats://ada:secret@10.0.0.1:4222",
        "nats://ada:secret@10.0.0.2:4223",
    ]
    assert registry.url == (
        "nats://ada:***@10.0.0.1:4222,10.0.0.2:4223?bucket=shop&timeout=2&max_age=0"
        "&replicas=3&storage=memory"
    )
    assert "secret" not in repr(registry)
    assert (registry.bucket, registry.timeout, registry.max_age) == ("shop", 2.0, 0.0)
    assert (registry.replicas, registry.storage, registry.source) == (3, "memory", "orders")
    default = NATSRegistry.from_url("nats://")
    assert (default.servers, default.bucket) == (["nats://127.0.0.1:4222"], DEFAULT_BUCKET)
    assert NATSRegistry.from_url("nats://s3cr3t-token@h:4222").url == "nats://***@h:4222"
    with pytest.raises(ValueError, match=r"ada:\*\*\*@h") as refused:
        NATSRegistry.from_url("nats://ada:secret@h?max_age=soon")
    assert "secret" not in str(refused.value)


def test_the_scheme_finds_the_backend() -> None:
    registry = registry_module.from_url("nats://127.0.0.1:4222?bucket=elsewhere")
    assert isinstance(registry, NATSRegistry)
    assert registry.bucket == "elsewhere"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("nats://h?buckets=x", "unknown option 'buckets'"),
        ("nats://h?timeout=soon", "bad option"),
        ("nats://h?bucket=a.b", "bucket name"),
        ("nats://h?bucket=", "bucket name"),
        ("nats://h?storage=tape", "storage"),
        ("nats://h?max_age=30", "max_age"),
        ("nats://h?replicas=0", "replicas"),
    ],
)
def test_bad_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NATSRegistry.from_url(url)


def test_keys_escape_what_a_key_cannot_hold() -> None:
    assert node_key("greeter", "1.0.0", "greeter-42") == "greeter.1=2E0=2E0.greeter-42"
    assert node_key("shop.cart", "v2", "n 1/é") == "shop=2Ecart.v2.n=201=2F=C3=A9"
    assert node_key("a=2Eb", "1", "x") == "a=3D2Eb.1.x"  # '=' itself is escaped: no collision
    with pytest.raises(ValueError, match="must not be empty"):
        node_key("greeter", "", "n")


async def test_an_unreachable_server_is_service_unavailable() -> None:
    url = f"nats://user:secret@127.0.0.1:{free_port()}?timeout=1"
    registry = NATSRegistry.from_url(url)
    began = time.monotonic()
    with pytest.raises(
        errors.ServiceUnavailable, match=r"cannot reach NATS at nats://user:\*\*\*@"
    ):
        await registry.start()
    assert time.monotonic() - began < 3
    with pytest.raises(RuntimeError, match="not started"):
        await registry.get_service("greeter")


# the bucket


async def test_start_makes_the_bucket_and_leaves_one_that_exists(
    bucket: str, client: Client
) -> None:
    async with NATSRegistry(servers=[SERVER], bucket=bucket, max_age=600):
        status = await (await kv_of(client, bucket)).status()
        assert (status.history, status.ttl) == (1, 600.0)
    async with NATSRegistry(servers=[SERVER], bucket=bucket, max_age=7200):
        assert (await (await kv_of(client, bucket)).status()).ttl == 600.0  # the operator's


async def test_a_ttl_over_the_buckets_max_age_is_refused(bucket: str) -> None:
    async with NATSRegistry(servers=[SERVER], bucket=bucket, max_age=600) as registry:
        with pytest.raises(ValueError, match="over the max_age"):
            await registry.register(make_service(unique()), ttl=601)


async def test_the_value_is_the_record_with_its_ttl(bucket: str, client: Client) -> None:
    service = make_service(unique(), version="2.1.0")
    async with NATSRegistry(servers=[SERVER], bucket=bucket) as registry:
        await registry.register(service, ttl=30)
        key = node_key(service.name, "2.1.0", service.nodes[0].id)
        entry = await (await kv_of(client, bucket)).get(key)
        assert entry.value is not None
        value = orjson.loads(entry.value)
        assert value["service"] == service.to_dict()
        assert value["ttl"] == 30
        assert value["registered"] == value["changed"] <= time.time()


async def test_a_node_without_ttl_is_kept_alive_and_withdrawn_at_stop(
    bucket: str, client: Client
) -> None:
    service = make_service(unique())
    key = node_key(service.name, service.version, service.nodes[0].id)
    kv = await kv_of_started(bucket, client)
    async with NATSRegistry(servers=[SERVER], bucket=bucket) as registry:
        await registry.register(service)
        entry = await kv.get(key)
        assert entry.value is not None
        assert orjson.loads(entry.value)["ttl"] == KEEP_ALIVE_TTL
    with pytest.raises(nats.js.errors.KeyNotFoundError):
        await kv.get(key)  # stop withdrew it, as mDNS sends its goodbyes


async def kv_of_started(bucket: str, client: Client) -> KeyValue:
    async with NATSRegistry(servers=[SERVER], bucket=bucket):
        pass  # makes the bucket
    return await kv_of(client, bucket)


async def test_a_lookup_deletes_an_expired_node(bucket: str, client: Client) -> None:
    service = make_service(unique())
    key = node_key(service.name, service.version, service.nodes[0].id)
    async with opened(bucket) as [registry, observer]:
        await registry.register(service, ttl=1)
        registry._registered.clear()  # as if its process had died: no withdrawal at stop
        await asyncio.sleep(1.2)
        assert await observer.get_service(service.name) == []
        with pytest.raises(nats.js.errors.KeyNotFoundError):
            await (await kv_of(client, bucket)).get(key)


async def test_a_heartbeat_makes_a_deleted_bucket_again(bucket: str, client: Client) -> None:
    service = make_service(unique())
    async with opened(bucket) as [registry, observer]:
        await registry.register(service, ttl=30)
        await client.jetstream().delete_key_value(bucket)
        assert await observer.get_service(service.name) == []
        await registry.register(service, ttl=30)
        assert node_ids(await observer.get_service(service.name)) == node_ids([service])


@contextlib.contextmanager
def entries_late(client: Client, bucket: str, seconds: float = 0.3) -> Iterator[set[object]]:
    """``client`` takes the bucket's entries ``seconds`` late, after whatever the server sent
    next (a consumer's info): what a busy server may do. Yields the entries held back."""
    prefix = f"$KV.{bucket}.".encode()
    process_msg = client._process_msg
    held: set[object] = set()

    async def late(sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        if not subject.startswith(prefix):
            await process_msg(sid, subject, reply, data, headers)
            return
        held.add(
            asyncio.get_running_loop().call_later(
                seconds,
                lambda: asyncio.ensure_future(process_msg(sid, subject, reply, data, headers)),
            )
        )

    client._process_msg = late  # type: ignore[method-assign]
    try:
        yield held
    finally:
        client._process_msg = process_msg  # type: ignore[method-assign]


async def test_a_lookup_waits_for_what_the_server_sent_after_answering_the_consumer_info(
    bucket: str, client: Client
) -> None:
    """Seen on a busy CI machine: a lookup right after a registration found no node. A server
    may answer a consumer's info before it writes the entries that consumer was sent, and
    nats-py's KV watch then says "all in" before they arrive (nats-io/nats.py#842)."""
    service = make_service(unique())
    async with opened(bucket, count=1) as [registry]:
        await registry.register(service, ttl=30)
        async with NATSRegistry(client=client, bucket=bucket) as observer:
            with entries_late(client, bucket) as held:
                assert node_ids(await observer.get_service(service.name)) == node_ids([service])
                assert held  # the entry did come after the info's answer


async def test_a_watch_counts_what_was_there_though_it_comes_late(
    bucket: str, client: Client
) -> None:
    """The same late entries and a watch: a node there before it is not reported as new."""
    before, after = make_service(unique()), make_service(unique())
    async with opened(bucket, count=1) as [registry]:
        await registry.register(before, ttl=30)
        await asyncio.sleep(1.2)  # registered well before the watch (past the clock slack)
        async with NATSRegistry(client=client, bucket=bucket) as observer:
            with entries_late(client, bucket) as held:
                async with contextlib.aclosing(observer.watch()) as stream:
                    first = asyncio.ensure_future(anext(stream))
                    await asyncio.sleep(0.1)
                    await registry.register(after, ttl=30)
                    event = await asyncio.wait_for(first, 5)
                assert held
        assert (event.type, event.service.name) == (EventType.CREATE, after.name)


async def test_names_with_dots_are_separate_services(bucket: str) -> None:
    name = unique()
    parent, child = make_service(name), make_service(f"{name}.cart")
    async with opened(bucket) as [registry, observer]:
        events: list[Event] = []

        async def collect() -> None:
            async with contextlib.aclosing(observer.watch(name)) as stream:
                async for event in stream:
                    events.append(event)
                    return

        watcher = asyncio.create_task(collect())
        await asyncio.sleep(0.2)
        await registry.register(child, ttl=30)
        await registry.register(parent, ttl=30)
        await asyncio.wait_for(watcher, timeout=5)
        assert [event.service.name for event in events] == [name]
        assert node_ids(await observer.get_service(name)) == node_ids([parent])
        assert node_ids(await observer.get_service(f"{name}.cart")) == node_ids([child])
        listed = {service.name for service in await observer.list_services()}
        assert {name, f"{name}.cart"} <= listed


# watching


async def test_a_change_is_an_update_and_a_heartbeat_is_nothing(bucket: str) -> None:
    service = make_service(unique())
    async with (
        opened(bucket) as [registry, observer],
        contextlib.aclosing(observer.watch(service.name)) as stream,
    ):
        first = asyncio.ensure_future(anext(stream))
        await registry.register(service, ttl=30)
        assert (await asyncio.wait_for(first, 5)).type is EventType.CREATE
        await registry.register(service, ttl=30)  # a heartbeat
        service.nodes[0].metadata["zone"] = "b"
        await registry.register(service, ttl=30)
        update = await asyncio.wait_for(anext(stream), 5)
        assert update.type is EventType.UPDATE
        assert update.service.nodes[0].metadata["zone"] == "b"
        await registry.deregister(service)
        assert (await asyncio.wait_for(anext(stream), 5)).type is EventType.DELETE


async def test_a_node_registered_while_the_watch_subscribes_is_seen(bucket: str) -> None:
    """What a cache does: advance the watch, then register (or look up) at once."""
    service = make_service(unique())
    async with (
        opened(bucket) as [registry, observer],
        contextlib.aclosing(observer.watch(service.name)) as stream,
    ):
        first = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0)
        await registry.register(service, ttl=30)
        event = await asyncio.wait_for(first, 5)
        assert (event.type, node_ids([event.service])) == (
            EventType.CREATE,
            node_ids([service]),
        )


async def test_a_node_there_before_the_watch_is_reported_when_it_expires(bucket: str) -> None:
    service = make_service(unique())
    async with opened(bucket) as [registry, observer]:
        await registry.register(service, ttl=4)
        await asyncio.sleep(2.5)  # older, by 1.5 s, than the watch's allowance for clock skew
        async with contextlib.aclosing(observer.watch(service.name)) as stream:
            event = await asyncio.wait_for(anext(stream), 5)
        assert (event.type, node_ids([event.service])) == (EventType.DELETE, node_ids([service]))


@pytest.mark.slow
async def test_measured_figures(bucket: str) -> None:
    """Time until a watcher sees a new node and an expired one, and the cost of a lookup."""
    async with opened(bucket) as [registry, observer]:
        seen, expired = [], []
        for _ in range(5):
            service = make_service(unique())
            async with contextlib.aclosing(observer.watch(service.name)) as stream:
                first = asyncio.ensure_future(anext(stream))
                await asyncio.sleep(0.1)
                began = time.perf_counter()
                await registry.register(service, ttl=1)
                assert (await asyncio.wait_for(first, 5)).type is EventType.CREATE
                seen.append(time.perf_counter() - began)
                began = time.perf_counter()
                assert (await asyncio.wait_for(anext(stream), 5)).type is EventType.DELETE
                expired.append(time.perf_counter() - began)
        service = make_service(unique())
        await registry.register(service, ttl=30)
        lookups = []
        for _ in range(50):
            began = time.perf_counter()
            assert await observer.get_service(service.name)
            lookups.append(time.perf_counter() - began)
    print(
        f"\nnew node seen by a watcher: median {statistics.median(seen) * 1000:.1f} ms; "
        f"expired node reported {statistics.median(expired):.3f} s after its put (ttl 1 s); "
        f"get_service: median {statistics.median(lookups) * 1000:.2f} ms, "
        f"max {max(lookups) * 1000:.2f} ms"
    )
    assert statistics.median(seen) < 0.5
    assert 0.9 < statistics.median(expired) < 2.5
    assert statistics.median(lookups) < 0.5


# a server of the test's own, restarted


@pytest.mark.slow
async def test_heartbeats_and_watches_outlive_a_server_that_lost_its_storage(
    tmp_path: Path,
) -> None:
    port = free_port()
    url = f"nats://{HOST}:{port}?bucket=registry"
    service, later = make_service(unique()), make_service(unique())
    with nats_server(port, tmp_path / "before") as server:
        await wait_for_port(port)
        async with NATSRegistry.from_url(url) as registry, NATSRegistry.from_url(url) as observer:
            events: list[Event] = []

            async def collect() -> None:
                async with contextlib.aclosing(observer.watch()) as stream:
                    async for event in stream:
                        events.append(event)

            async def heartbeat() -> None:
                while True:
                    with contextlib.suppress(errors.ServiceUnavailable):
                        await registry.register(service, ttl=3)
                    await asyncio.sleep(0.3)

            watcher = asyncio.create_task(collect())
            beating = asyncio.create_task(heartbeat())
            try:
                await until(lambda: len(events) == 1, "the first node watched", timeout=5)
                server.terminate()
                server.wait(5)
                # a new server on the same port, with none of the old one's streams
                with nats_server(port, tmp_path / "after"):
                    began = time.monotonic()

                    async def found() -> bool:
                        """Asked on a connection of its own to the new server."""
                        with contextlib.suppress(errors.ServiceUnavailable):
                            async with NATSRegistry.from_url(f"{url}&timeout=1") as fresh:
                                return bool(await fresh.get_service(service.name))
                        return False

                    await eventually(found, timeout=20, message="the node not registered again")
                    back = time.monotonic() - began

                    async def observed() -> bool:
                        with contextlib.suppress(errors.ServiceUnavailable):
                            return bool(await observer.get_service(service.name))
                        return False

                    await eventually(observed, timeout=20, message="the observer never back")
                    await registry.register(later, ttl=30)

                    def later_seen() -> bool:
                        return any(event.service.name == later.name for event in events)

                    await until(later_seen, "a watch that outlives the restart", timeout=10)
                    assert [event.type for event in events if event.service.name == later.name] == [
                        EventType.CREATE
                    ]
                    print(f"\nnode found again {back:.2f} s after the server restarted")
                    beating.cancel()
                    watcher.cancel()
                    await asyncio.gather(beating, watcher, return_exceptions=True)
                    await registry.stop()  # while the server is there to withdraw the nodes
                    assert await observer.get_service(service.name) == []
            finally:
                beating.cancel()
                watcher.cancel()
                await asyncio.gather(beating, watcher, return_exceptions=True)


# a service found through it


class Greeting(BaseModel):
    name: str


class Reply(BaseModel):
    message: str


async def test_a_service_is_called_through_the_nats_registry(
    bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MICRO_REGISTRY", f"{SERVER}?bucket={bucket}")
    name = unique("greeter")
    greeter = MicroRouter("Greeter")

    @greeter.rpc()
    async def hello(req: Greeting) -> Reply:
        return Reply(message=f"Hello {req.name}")

    service = Service(name, register_ttl=5, register_interval=1)
    app = FastAPI(lifespan=service.lifespan)
    app.include_router(greeter)
    async with serve(app), Service(unique("caller")) as caller:
        assert isinstance(caller.registry, NATSRegistry)
        await service.wait_registered()
        reply = await caller.client.call(name, "Greeter.Hello", {"name": "Ada"})
        assert reply == {"message": "Hello Ada"}
        [record] = await caller.registry.get_service(name)
        assert [endpoint.name for endpoint in record.endpoints] == ["Greeter.Hello"]

    async def withdrawn() -> bool:
        async with NATSRegistry(servers=[SERVER], bucket=bucket) as registry:
            return await registry.get_service(name) == []

    await eventually(withdrawn, timeout=5, message="the node outlived its service")
