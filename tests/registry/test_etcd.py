"""``etcd://``: the registry conformance suite on a real etcd, and what only etcd has: one
lease per node, the URL, failing over between hosts, and surviving a restart of etcd."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from importlib.metadata import entry_points

import aetcd
import pytest
from asgi_micro_etcd._client import connect, parse_url
from asgi_micro_etcd.registry import DEFAULT_PREFIX, EtcdRegistry
from fastapi import FastAPI
from pydantic import BaseModel

from asgi_micro import MicroRouter, Service, errors
from asgi_micro.registry import Event, EventType, Registry, from_url
from asgi_micro.registry import Service as Record
from asgi_micro.testing.registry import RegistryConformance, make_service, node_ids, unique
from tests.etcd import etcd_server
from tests.helpers import eventually, free_port, serve


def etcd(http_url: str) -> str:
    """``etcd://host:port`` for the ``http://host:port`` that ``tests.etcd`` yields."""
    return http_url.replace("http://", "etcd://", 1)


@pytest.fixture
async def url(etcd_url: str) -> AsyncIterator[str]:
    """The session's etcd with a key prefix of this test's own, emptied afterwards."""
    prefix = f"/asgi-micro-test/{uuid.uuid4().hex}/"
    yield f"{etcd(etcd_url)}?prefix={prefix}"
    async with raw(etcd(etcd_url)) as client:
        await client.delete_prefix(prefix.encode())


@contextlib.asynccontextmanager
async def raw(url: str) -> AsyncIterator[aetcd.Client]:
    client = await connect(url)
    try:
        yield client
    finally:
        await client.close()


class TestEtcd(RegistryConformance):
    @pytest.fixture(autouse=True)
    def _etcd(self, url: str) -> None:
        self.url = url

    @contextlib.asynccontextmanager
    async def pair(self) -> AsyncIterator[tuple[Registry, Registry]]:
        """Two clients of one etcd, as two processes would have."""
        async with EtcdRegistry(self.url) as registry, EtcdRegistry(self.url) as observer:
            yield registry, observer


async def test_a_heartbeat_keeps_one_lease_and_writes_only_changes(url: str) -> None:
    async with EtcdRegistry(url) as registry, raw(url) as client:
        service = make_service(unique())
        key = registry._key(service.name, service.version, service.nodes[0].id)
        await registry.register(service, ttl=10)
        first = await client.get(key)
        assert first is not None
        assert first.lease != 0
        await asyncio.sleep(1.2)
        assert (await client.get_lease_info(first.lease, keys=False)).TTL <= 9
        for _ in range(3):
            await registry.register(service, ttl=10)
        again = await client.get(key)
        assert again is not None
        assert (again.lease, again.mod_revision) == (first.lease, first.mod_revision)
        assert (await client.get_lease_info(first.lease, keys=False)).TTL >= 9  # refreshed

        service.metadata["team"] = "edge"  # a changed record is written, on the same lease
        await registry.register(service, ttl=10)
        changed = await client.get(key)
        assert changed is not None
        assert changed.lease == first.lease
        assert changed.mod_revision > first.mod_revision
        assert b'"edge"' in changed.value

        await client.delete(key)  # someone removed the key: the heartbeat writes it again
        await registry.register(service, ttl=10)
        rewritten = await client.get(key)
        assert rewritten is not None
        assert rewritten.lease == first.lease

        await client.revoke_lease(first.lease)  # as if it had expired
        await registry.register(service, ttl=10)
        renewed = await client.get(key)
        assert renewed is not None
        assert renewed.lease not in (0, first.lease)

        await registry.register(service)  # without a TTL: no lease, and the old one is revoked
        unleased = await client.get(key)
        assert unleased is not None
        assert unleased.lease == 0
        assert (await client.get_lease_info(renewed.lease, keys=False)).TTL == -1

        await registry.deregister(service)
        assert await client.get(key) is None


async def test_deregister_revokes_the_lease(url: str) -> None:
    async with EtcdRegistry(url) as registry, raw(url) as client:
        service = make_service(unique())
        await registry.register(service, ttl=30)
        key = registry._key(service.name, service.version, service.nodes[0].id)
        found = await client.get(key)
        assert found is not None
        await registry.deregister(service)
        assert (await client.get_lease_info(found.lease, keys=False)).TTL == -1


async def test_keys_are_one_per_node_under_the_prefix(url: str) -> None:
    async with EtcdRegistry(url) as registry, raw(url) as client:
        name = unique("a/b")  # a '/' in a name does not shift the other parts of the key
        service = make_service(name, version="1.0/beta")
        await registry.register(service, ttl=30)
        node = service.nodes[0].id
        prefix = parse_url(url).prefix
        [kv] = list(await client.get_prefix(f"{prefix}".encode()))
        assert (
            kv.key.decode()
            == f"{prefix}{name.replace('/', '%2F')}/1.0%2Fbeta/{node.replace('/', '%2F')}"
        )
        [record] = await registry.get_service(name)
        assert (record.name, record.version, record.nodes[0].id) == (name, "1.0/beta", node)
        await registry.deregister(service)


async def test_the_watch_reports_a_changed_record_as_update(url: str) -> None:
    async with EtcdRegistry(url) as registry, EtcdRegistry(url) as observer:
        service = make_service(unique())
        events = observer.watch(service.name)
        try:
            first = asyncio.ensure_future(anext(events))
            await asyncio.sleep(0.2)
            await registry.register(service, ttl=30)
            assert (await asyncio.wait_for(first, 5)).type is EventType.CREATE
            await registry.register(service, ttl=30)  # a heartbeat is no change
            service.metadata["team"] = "edge"
            await registry.register(service, ttl=30)
            update = await asyncio.wait_for(anext(events), 5)
            assert update.type is EventType.UPDATE
            assert update.service.metadata["team"] == "edge"
            await registry.deregister(service)
            delete = await asyncio.wait_for(anext(events), 5)
            assert delete.type is EventType.DELETE
            assert delete.service.nodes[0].id == service.nodes[0].id
        finally:
            await events.aclose()


def test_url_options_and_redaction() -> None:
    parsed = parse_url("etcd://ada:s%3Acret@10.0.0.1:2380,[::1],etcd.local?prefix=/x/&timeout=2.5")
    assert parsed.endpoints == [("10.0.0.1", 2380), ("::1", 2379), ("etcd.local", 2379)]
    assert (parsed.user, parsed.password) == ("ada", "s:cret")
    assert (parsed.prefix, parsed.timeout) == ("/x/", 2.5)
    assert "s:cret" not in parsed.redacted
    assert "s%3Acret" not in parsed.redacted
    assert parsed.redacted.startswith("etcd://ada:***@10.0.0.1:2380,[::1],etcd.local")
    assert parse_url("etcd://").endpoints == [("127.0.0.1", 2379)]

    registry = EtcdRegistry("etcd://ada:secret@127.0.0.1:2379/?prefix=/services")
    assert registry.prefix == "/services/"
    assert "secret" not in registry.url
    assert "secret" not in repr(registry)
    assert EtcdRegistry("etcd://127.0.0.1").prefix == DEFAULT_PREFIX
    assert EtcdRegistry("etcd://", prefix="/mine").prefix == "/mine/"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:2379", "starts with etcd://"),
        ("etcd://127.0.0.1:port", "bad port"),
        ("etcd://127.0.0.1:70000", "bad port"),
        ("etcd://127.0.0.1:2379,", "empty host"),
        ("etcd://ada@127.0.0.1", "both user and password"),
        ("etcd://127.0.0.1/micro", r"\?prefix=/micro"),
        ("etcd://127.0.0.1?prefix=", "prefix .* must not be empty"),
        ("etcd://127.0.0.1?timeout=soon", "timeout .* positive"),
        ("etcd://127.0.0.1?timeout=0", "timeout .* positive"),
        ("etcd://127.0.0.1?ttl=3", "unknown option 'ttl'"),
    ],
)
def test_bad_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EtcdRegistry.from_url(url)


def test_the_scheme_is_an_entry_point() -> None:
    [entry] = [ep for ep in entry_points(group="asgi_micro.registry") if ep.name == "etcd"]
    assert entry.value.startswith("asgi_micro_etcd.registry:EtcdRegistry")
    registry = from_url("etcd://127.0.0.1:2379?prefix=/p/")
    assert isinstance(registry, EtcdRegistry)
    assert registry.prefix == "/p/"


async def test_unreachable_etcd_fails_at_start() -> None:
    url = f"etcd://user:hidden@127.0.0.1:{free_port()}?timeout=2"
    registry = EtcdRegistry(url)
    with pytest.raises(errors.ServiceUnavailable, match=r"etcd at etcd://user:\*\*\*@127") as exc:
        await registry.start()
    assert "hidden" not in str(exc.value)
    with pytest.raises(errors.ServiceUnavailable, match="not started"):
        await registry.get_service("any")


async def test_a_dead_host_in_the_list_is_passed_over(url: str) -> None:
    parsed = parse_url(url)
    [(host, port)] = parsed.endpoints
    both = f"etcd://127.0.0.1:{free_port()},{host}:{port}?prefix={parsed.prefix}"
    async with EtcdRegistry(both) as registry:
        service = make_service(unique())
        await registry.register(service, ttl=30)
        assert node_ids(await registry.get_service(service.name)) == node_ids([service])
        await registry.deregister(service)


@pytest.mark.slow
async def test_failing_over_when_the_host_in_use_stops(url: str) -> None:
    """Two independent etcds stand for two members: the registry moves to the one that
    answers and registers there again on its next heartbeat."""
    prefix = parse_url(url).prefix
    with contextlib.ExitStack() as first_etcd:
        first = parse_url(etcd(first_etcd.enter_context(etcd_server()))).endpoints[0]
        second = parse_url(url).endpoints[0]
        hosts = ",".join(f"{host}:{port}" for host, port in (first, second))
        async with EtcdRegistry(f"etcd://{hosts}?prefix={prefix}") as registry:
            service = make_service(unique())
            await registry.register(service, ttl=30)
            first_etcd.close()
            # The first has stopped: the heartbeat connects to the second and, finding
            # there no lease of its own, registers the node anew.
            async with EtcdRegistry(url) as observer:
                assert await observer.get_service(service.name) == []
                await registry.register(service, ttl=30)
                assert node_ids(await observer.get_service(service.name)) == node_ids([service])
                await registry.deregister(service)


async def next_event(events: AsyncIterator[Event], timeout: float = 15.0) -> Event:
    return await asyncio.wait_for(anext(events), timeout)


@pytest.mark.slow
async def test_a_restart_of_etcd_loses_neither_nodes_nor_the_watch() -> None:
    """etcd stopped and started again on its data: the node is still there, the heartbeat
    goes on, and the same watch sees what changes after the restart."""
    port, peer_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="asgi-micro-etcd-") as data:
        with etcd_server(port=port, peer_port=peer_port, data_dir=data) as http_url:
            url = f"{etcd(http_url)}?timeout=2"
            registry, observer = EtcdRegistry(url), EtcdRegistry(url)
            await registry.start()
            await observer.start()
            name = unique()
            first, second = make_service(name), make_service(name)
            await registry.register(first, ttl=30)
            events = observer.watch(name)
            waiting = asyncio.ensure_future(next_event(events))
            await asyncio.sleep(0.2)
        try:
            with pytest.raises(errors.ServiceUnavailable, match=r"etcd at etcd://127\.0\.0\.1"):
                await registry.register(first, ttl=30)  # the heartbeat while etcd is down
            with etcd_server(port=port, peer_port=peer_port, data_dir=data):
                await registry.register(first, ttl=30)
                await registry.register(second, ttl=30)
                created = await waiting
                assert (created.type, created.service.nodes[0].id) == (
                    EventType.CREATE,
                    second.nodes[0].id,
                )
                assert node_ids(await observer.get_service(name)) == node_ids([first, second])
                await registry.deregister(first)
                deleted = await next_event(events)
                assert (deleted.type, deleted.service.nodes[0].id) == (
                    EventType.DELETE,
                    first.nodes[0].id,
                )
        finally:
            if not waiting.done():
                waiting.cancel()
            await events.aclose()
            await registry.stop()
            await observer.stop()


@pytest.mark.slow
async def test_etcd_that_lost_its_data_gets_the_node_again_on_the_next_heartbeat() -> None:
    """etcd back on the same port with nothing in it: the heartbeat finds its lease gone and
    registers the node anew; the watch reads again and reports the node gone, then back."""
    port, peer_port = free_port(), free_port()
    with etcd_server(port=port, peer_port=peer_port) as http_url:
        url = f"{etcd(http_url)}?timeout=2"
        registry, observer = EtcdRegistry(url), EtcdRegistry(url)
        await registry.start()
        await observer.start()
        service = make_service(unique())
        events = observer.watch(service.name)
        waiting = asyncio.ensure_future(next_event(events))
        await asyncio.sleep(0.2)
        await registry.register(service, ttl=30)
        assert (await waiting).type is EventType.CREATE
    try:
        with etcd_server(port=port, peer_port=peer_port):  # a new, empty data directory
            gone = await next_event(events)  # read again once etcd answers: nothing there
            assert (gone.type, gone.service.nodes[0].id) == (
                EventType.DELETE,
                service.nodes[0].id,
            )
            await eventually(lambda: _registers(registry, service), timeout=10)
            back = await next_event(events)
            assert (back.type, back.service.nodes[0].id) == (
                EventType.CREATE,
                service.nodes[0].id,
            )
            assert node_ids(await observer.get_service(service.name)) == node_ids([service])
    finally:
        await events.aclose()
        await registry.stop()
        await observer.stop()


async def _registers(registry: EtcdRegistry, service: Record) -> bool:
    try:
        await registry.register(service, ttl=30)
    except errors.ServiceUnavailable:
        return False
    return True


class Greeting(BaseModel):
    text: str


async def test_a_service_on_etcd_is_called_through_it(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MICRO_REGISTRY", url)
    name = unique("greeter")
    greeter = MicroRouter("Greeter")

    @greeter.rpc()
    async def hello(req: Greeting) -> Greeting:
        return Greeting(text=f"hello {req.text}")

    service = Service(name, register_ttl=5, register_interval=1)
    assert isinstance(service.registry, EtcdRegistry)
    app = FastAPI(lifespan=service.lifespan)
    app.include_router(greeter)
    async with serve(app), Service(unique("caller")) as caller:
        await service.wait_registered()
        [record] = await caller.registry.get_service(name)
        assert record.nodes[0].id == service.id
        reply = await caller.client.call(name, "Greeter.Hello", {"text": "etcd"})
        assert reply["text"] == "hello etcd"
    async with EtcdRegistry(url) as registry:
        assert await registry.get_service(name) == []  # deregistered on the way out


async def test_measure_watch_latency_and_lookup_cost(url: str) -> None:
    """Figures for docs/registry.md; run with ``-s`` to see them. Bounds are loose."""
    async with EtcdRegistry(url) as registry, EtcdRegistry(url) as observer:
        appear, vanish = [], []
        for _ in range(10):
            service = make_service(unique())
            events = observer.watch(service.name)
            try:
                first = asyncio.ensure_future(anext(events))
                await asyncio.sleep(0.05)
                began = time.perf_counter()
                await registry.register(service, ttl=30)
                await asyncio.wait_for(first, 5)
                appear.append(time.perf_counter() - began)
                began = time.perf_counter()
                await registry.deregister(service)
                await asyncio.wait_for(anext(events), 5)
                vanish.append(time.perf_counter() - began)
            finally:
                await events.aclose()

        service = make_service(unique())
        events = observer.watch(service.name)
        try:
            first = asyncio.ensure_future(anext(events))
            await asyncio.sleep(0.05)
            await registry.register(service, ttl=1)
            await asyncio.wait_for(first, 5)
            began = time.perf_counter()
            expired = await asyncio.wait_for(anext(events), 10)
            expiry = time.perf_counter() - began
            assert expired.type is EventType.DELETE
        finally:
            await events.aclose()

        name = unique()
        nodes = [make_service(name) for _ in range(10)]
        for node in nodes:
            await registry.register(node, ttl=30)
        lookups = []
        for _ in range(200):
            began = time.perf_counter()
            await observer.get_service(name)
            lookups.append(time.perf_counter() - began)
        heartbeats = []
        for _ in range(50):
            began = time.perf_counter()
            await registry.register(nodes[0], ttl=30)
            heartbeats.append(time.perf_counter() - began)
        for node in nodes:
            await registry.deregister(node)

    def ms(samples: list[float]) -> str:
        ordered = sorted(samples)
        p95 = ordered[int(len(ordered) * 0.95) - 1]
        return f"median {statistics.median(ordered) * 1000:.2f} ms, p95 {p95 * 1000:.2f} ms"

    print(
        f"\netcd registry: register -> watcher CREATE {ms(appear)}"
        f"\n  deregister -> watcher DELETE {ms(vanish)}"
        f"\n  ttl=1 (etcd rounds to its minimum) expiry -> DELETE after {expiry:.2f} s"
        f"\n  get_service, 10 nodes: {ms(lookups)}"
        f"\n  heartbeat (keep-alive + compare): {ms(heartbeats)}"
    )
    assert statistics.median(appear) < 1.0
    assert statistics.median(vanish) < 1.0
    assert expiry < 5.0


async def test_stopping_the_registry_ends_its_watches(url: str) -> None:
    registry = EtcdRegistry(url)
    await registry.start()
    events = registry.watch()
    waiting = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0.2)
    await registry.stop()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, 5)


async def test_a_failed_lookup_names_the_prefix(url: str) -> None:
    async with Service(unique("caller"), registry=EtcdRegistry(url)) as caller:
        with pytest.raises(errors.MicroError, match="key prefix '/asgi-micro-test/"):
            await caller.client.call(unique("missing"), "Missing.Call", {})
