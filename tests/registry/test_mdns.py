"""The mDNS registry on loopback: across processes, TTLs, fetching what TXT cannot hold, options.

The shared behaviour runs in ``test_conformance.py`` (``TestMDNS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from zeroconf._dns import DNSText

from asgi_micro.registry import Endpoint, Event, EventType, Node, Service, from_url
from asgi_micro.registry.mdns import (
    REGISTRY_PATH,
    MDNSRegistry,
    _decode_txt,
    _encode_txt,
    _instance_name,
    _interfaces_for,
)
from asgi_micro.testing.registry import make_service, node_ids, unique
from tests.helpers import eventually, free_port, mdns_domain, new_mdns_domain, serve

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = ["127.0.0.1"]


def loopback_registry(**options: float) -> MDNSRegistry:
    return MDNSRegistry(interfaces=LOOPBACK, domain=mdns_domain(), **options)


async def ids_of(registry: MDNSRegistry, name: str) -> set[str]:
    return node_ids(await registry.get_service(name))


async def is_listed(registry: MDNSRegistry, service: Service) -> bool:
    """Whether ``registry`` knows the node, without fetching from it as get_service may."""
    return service.nodes[0].id in node_ids(await registry.list_services())


# -- nodes in other processes ----------------------------------------------------------------


@dataclass
class NodeProcess:
    process: asyncio.subprocess.Process
    node_id: str

    async def registered(self) -> str:
        """The interfaces the child's registry opened, once its node is announced."""
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout=20)
        assert line.startswith(b"registered "), line
        return line.decode().split()[1]

    async def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(b"stop\n")
        await self.process.stdin.drain()
        assert await asyncio.wait_for(self.process.wait(), timeout=10) == 0


@contextlib.asynccontextmanager
async def node_process(name: str, *, ttl: float, heartbeat: float) -> AsyncIterator[NodeProcess]:
    node_id = f"{name}-{uuid.uuid4()}"
    args = [name, node_id, f"127.0.0.1:{free_port()}", str(ttl), str(heartbeat)]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.registry.mdns_node",
        *args,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        yield NodeProcess(process, node_id)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


@pytest.mark.slow
async def test_nodes_in_separate_processes_find_each_other_and_leave() -> None:
    name = unique("multi")
    async with (
        loopback_registry() as observer,
        node_process(name, ttl=30, heartbeat=10) as leaving,
        node_process(name, ttl=2, heartbeat=0.9) as dying,
    ):
        events: list[Event] = []

        async def collect() -> None:
            async with contextlib.aclosing(observer.watch(name)) as stream:
                async for event in stream:
                    events.append(event)

        watcher = asyncio.create_task(collect())
        # A 127.0.0.1 node makes its process open mDNS on loopback alone.
        assert set(await asyncio.gather(leaving.registered(), dying.registered())) == {"127.0.0.1"}

        async def both() -> bool:
            return await ids_of(observer, name) == {leaving.node_id, dying.node_id}

        await eventually(both, timeout=5, message="the observer does not see both processes")

        await leaving.stop()  # deregisters: goodbyes, then a clean exit

        async def only_dying() -> bool:
            return await ids_of(observer, name) == {dying.node_id}

        await eventually(only_dying, timeout=2, message="a stopped process is still listed")

        async with loopback_registry() as fresh:

            async def fresh_sees_dying() -> set[str]:
                return node_ids(await fresh.list_services()) & {leaving.node_id, dying.node_id}

            assert await eventually(fresh_sees_dying, timeout=3) == {dying.node_id}

        dying.process.kill()  # SIGKILL: no goodbye, only the TTL of 2 s ends it
        killed_at = time.monotonic()
        await asyncio.sleep(0.5)
        assert dying.node_id in await ids_of(observer, name), "gone long before its TTL"

        async def gone() -> bool:
            return await ids_of(observer, name) == set()

        await eventually(gone, timeout=3.5, interval=0.02, message="a killed node outlived its TTL")
        assert time.monotonic() - killed_at > 1.0  # the last heartbeat was at most 0.9 s old

        async def deleted() -> bool:
            return any(
                e.type is EventType.DELETE and e.service.nodes[0].id == dying.node_id
                for e in events
            )

        await eventually(deleted, timeout=1, message="no DELETE event when the TTL ran out")
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher

    by_node = {(e.type, e.service.nodes[0].id) for e in events}
    assert {(EventType.CREATE, leaving.node_id), (EventType.DELETE, leaving.node_id)} <= by_node
    assert (EventType.CREATE, dying.node_id) in by_node


async def test_a_fresh_registry_waits_for_answers_a_node_may_delay() -> None:
    service = make_service(unique())
    async with loopback_registry() as registry:
        await registry.register(service, ttl=30)
        # Having just multicast its records, the node answers a query only a second later.
        async with loopback_registry() as fresh:
            assert await fresh.get_service(service.name) == [service]


async def test_a_lookup_waits_for_its_name_longer_than_a_listing_waits() -> None:
    """A listing gives what answered within ``timeout``; a lookup of one name waits up to
    ``lookup_timeout`` for it, and ends when it is heard of."""
    service = make_service(unique())
    async with (
        loopback_registry(browse_timeout=0.2, lookup_timeout=10) as fresh,
        loopback_registry() as registry,
    ):
        await asyncio.sleep(0.3)  # past the listing window
        assert not await is_listed(fresh, service)
        lookup = asyncio.create_task(fresh.get_service(service.name))
        await asyncio.sleep(0.2)
        assert not lookup.done()
        await registry.register(service, ttl=30)
        assert await asyncio.wait_for(lookup, 5) == [service]


async def test_a_node_that_left_is_not_revived_by_an_answer_held_back() -> None:
    service = make_service(unique())
    async with loopback_registry() as registry:
        await registry.register(service, ttl=30)
        async with loopback_registry() as observer:  # the node answers its query a second late
            await asyncio.sleep(0.3)
            await registry.deregister(service)
            await asyncio.sleep(1.2)  # past the moment the held-back answer was due
            assert await observer.get_service(service.name) == []


# -- fetching from the node --------------------------------------------------------------------


def large_service(name: str, address: str, *, tag: str = "") -> Service:
    """A service whose endpoints cannot fit a TXT record, even compressed."""
    endpoints = [
        Endpoint(
            name=f"Big.Method{i}{tag}",
            request={"type": "object", "description": secrets.token_hex(32)},
            metadata={"method": "POST", "path": f"/big/method{i}", "kind": "rpc"},
        )
        for i in range(60)
    ]
    node = Node(id=f"{name}-{uuid.uuid4()}", address=address, metadata={"zone": "a"})
    return Service(
        name=name, version="1.0.0", metadata={"team": "core"}, endpoints=endpoints, nodes=[node]
    )


def registry_app(service: Service, served: list[str]) -> Starlette:
    """What the service runtime serves at /_micro/registry: this node's own record."""

    async def record(request: Request) -> Response:
        served.append(request.url.path)
        return Response(orjson.dumps(service.to_dict()), media_type="application/json")

    return Starlette(routes=[Route(REGISTRY_PATH, record)])


async def test_endpoints_too_large_for_txt_are_fetched_once_per_revision() -> None:
    port = free_port()
    service = large_service(unique("big"), f"127.0.0.1:{port}")
    assert "e" in _decode_txt(_encode_txt(service, service.nodes[0])).missing  # type: ignore[union-attr]
    served: list[str] = []
    async with (
        serve(registry_app(service, served), port=port),
        loopback_registry() as registry,
        loopback_registry() as observer,
    ):
        await registry.register(service, ttl=30)

        await eventually(lambda: is_listed(observer, service))
        found = await asyncio.gather(*(observer.get_service(service.name) for _ in range(3)))
        assert all(result == [service] for result in found)
        assert served == [REGISTRY_PATH]  # concurrent lookups share one fetch
        assert await observer.get_service(service.name) == [service]
        assert served == [REGISTRY_PATH]  # and later ones use it while the revision holds

        changed = large_service(service.name, service.nodes[0].address, tag="v2")
        changed.nodes = service.nodes
        service.endpoints = changed.endpoints  # what the app serves from now on
        await registry.register(service, ttl=30)

        async def refetched() -> bool:
            found = await observer.get_service(service.name)
            return bool(found) and found[0].endpoints == changed.endpoints

        await eventually(refetched, message="a new revision was not fetched")
        assert served == [REGISTRY_PATH] * 2


async def test_small_records_are_not_fetched() -> None:
    port = free_port()
    service = make_service(unique())
    service.nodes[0].address = f"127.0.0.1:{port}"
    served: list[str] = []
    async with (
        serve(registry_app(service, served), port=port),
        loopback_registry() as registry,
        loopback_registry() as observer,
    ):
        await registry.register(service, ttl=30)
        assert await eventually(lambda: observer.get_service(service.name)) == [service]
        assert served == []


@pytest.mark.parametrize("failure", ["refused", "hangs", "garbage"])
async def test_a_failed_fetch_gives_what_txt_carried(failure: str) -> None:
    port = free_port()
    service = large_service(unique("big"), f"127.0.0.1:{port}")
    release = asyncio.Event()

    async def broken(request: Request) -> Response:
        await release.wait()  # "hangs" never sets it while the lookups run
        return Response(b"not json", media_type="application/json")

    if failure == "garbage":
        release.set()
    app = Starlette(routes=[Route(REGISTRY_PATH, broken)])
    async with contextlib.AsyncExitStack() as stack:
        if failure != "refused":
            await stack.enter_async_context(serve(app, port=port))
        stack.callback(release.set)  # let a hanging request end before the server stops
        registry = await stack.enter_async_context(loopback_registry())
        observer = await stack.enter_async_context(loopback_registry(fetch_timeout=0.5))
        await registry.register(service, ttl=30)

        await eventually(lambda: is_listed(observer, service))
        for attempt in ("fetches", "remembers the failure"):
            started = time.monotonic()
            [found] = await observer.get_service(service.name)
            took = time.monotonic() - started
            assert took < (1.5 if attempt == "fetches" else 0.4), (attempt, took)
            assert found.endpoints == []
            assert found.metadata == {"team": "core"}
            nodes = [(node.id, node.metadata) for node in found.nodes]
            assert nodes == [(service.nodes[0].id, {"zone": "a"})]


async def test_stop_leaves_no_task_behind() -> None:
    port = free_port()
    service = large_service(unique("big"), f"127.0.0.1:{port}")
    async with serve(registry_app(service, []), port=port):
        before = asyncio.all_tasks()
        registry = loopback_registry()
        await registry.register(service, ttl=30)
        watching = registry.watch()
        first = asyncio.ensure_future(anext(watching))
        assert (await eventually(lambda: registry.get_service(service.name))) == [service]
        await registry.stop()
        with pytest.raises(StopAsyncIteration):  # stop() ends every watch
            await first
        await watching.aclose()

        async def settled() -> bool:
            return asyncio.all_tasks() <= before | {asyncio.current_task()}

        await eventually(settled, timeout=2, message="tasks outlived stop()")
        await registry.stop()  # a second stop does nothing


# -- what goes on the wire ---------------------------------------------------------------------


async def test_registration_carries_its_ttl() -> None:
    service = make_service(unique())
    async with loopback_registry() as registry, loopback_registry() as observer:
        for ttl, expected in ((None, 120), (7.5, 8)):
            await registry.register(service, ttl=ttl)

            async def record_ttl(expected: int = expected) -> bool:
                # zeroconf's cache holds the TXT record as the network delivered it
                assert observer._zeroconf is not None
                instance = f"{_instance_name(service.nodes[0].id)}.{observer.service_type}"
                records = observer._zeroconf.zeroconf.cache.async_entries_with_name(instance)
                return {r.ttl for r in records if isinstance(r, DNSText)} == {expected}

            await eventually(record_ttl, message=f"TXT TTL is not {expected}")
        await registry.deregister(service)


async def test_watch_tells_updates_from_heartbeats() -> None:
    service = make_service(unique())
    async with loopback_registry() as registry, loopback_registry() as observer:
        events: list[Event] = []

        async def collect() -> None:
            async with contextlib.aclosing(observer.watch(service.name)) as stream:
                async for event in stream:
                    events.append(event)

        watcher = asyncio.create_task(collect())
        await registry.register(service, ttl=30)
        await registry.register(service, ttl=30)  # a heartbeat: no event
        service.metadata["team"] = "edge"
        await registry.register(service, ttl=30)

        async def updated() -> bool:
            return [event.type for event in events] == [EventType.CREATE, EventType.UPDATE]

        await eventually(updated, message="expected CREATE then UPDATE")
        assert events[-1].service.metadata["team"] == "edge"
        assert await observer.get_service(service.name) == [service]

        async def deleted() -> bool:
            return events[-1].type is EventType.DELETE

        await registry.stop()  # its goodbyes end the node; stop() of the observer ends the watch
        await eventually(deleted, timeout=2, message="no DELETE after the node's goodbyes")
        await observer.stop()
        await asyncio.wait_for(watcher, timeout=2)


async def test_long_node_ids_are_shortened_and_kept_whole() -> None:
    name = unique("a-service-name-long-enough-to-push-the-node-id-past")
    service = make_service(name)
    node_id = service.nodes[0].id
    assert len(node_id) > 63
    label = _instance_name(node_id)
    assert len(label.encode()) <= 63
    assert label == _instance_name(node_id)  # the same id always gets the same name
    assert _instance_name(f"{name}.{uuid.uuid4()}") != _instance_name(f"{name}.{uuid.uuid4()}")
    async with loopback_registry() as registry, loopback_registry() as observer:
        await registry.register(service, ttl=30)
        assert await eventually(lambda: observer.get_service(name)) == [service]


def test_txt_record_keeps_what_fits_and_flags_the_rest() -> None:
    service = make_service(unique())
    node = service.nodes[0]
    node.metadata.update({"big": "x" * 300, "bad=key": "v", "wide": "y" * 200})
    advert = _decode_txt(_encode_txt(service, node))
    assert advert is not None
    assert advert.missing == "n"  # two node metadata keys cannot be TXT strings
    assert advert.record.nodes[0].metadata == {"zone": "a", "wide": "y" * 200}
    assert advert.record.endpoints == service.endpoints
    assert advert.record.metadata == service.metadata

    service.metadata.update({f"k{i}": "z" * 200 for i in range(8)})  # 1.6 kB: over the budget
    text = _encode_txt(service, node)
    assert len(text) <= 1300
    advert = _decode_txt(text)
    assert advert is not None
    assert advert.missing == "ens"  # metadata comes first; the endpoints no longer fit
    assert advert.record.endpoints == []
    assert set(advert.record.metadata) < set(service.metadata)
    assert _decode_txt(b"\x05a=b=c\x03x=y") is None  # not one of ours


# -- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "interfaces", "timeouts"),
    [
        ("mdns://", None, (1.5, 3.0, 1.0)),
        ("mdns://127.0.0.1", ["127.0.0.1"], (1.5, 3.0, 1.0)),
        ("mdns://0.0.0.0", ["0.0.0.0"], (1.5, 3.0, 1.0)),
        (
            "mdns://?interfaces=127.0.0.1,10.0.0.2&timeout=0.5",
            ["127.0.0.1", "10.0.0.2"],
            (0.5, 3.0, 1.0),
        ),
        ("MDNS://?fetch_timeout=2.5&timeout=0&lookup_timeout=7", None, (0.0, 7.0, 2.5)),
        ("mdns://?lookup_timeout=0", None, (1.5, 0.0, 1.0)),
    ],
)
def test_from_url(
    url: str, interfaces: list[str] | None, timeouts: tuple[float, float, float]
) -> None:
    registry = from_url(url)
    assert isinstance(registry, MDNSRegistry)
    assert registry._configured == interfaces
    assert (registry.browse_timeout, registry.lookup_timeout, registry.fetch_timeout) == timeouts
    assert registry.interfaces is None  # nothing opens before the first use
    again = MDNSRegistry.from_url(registry.url)
    assert (again.url, again._configured) == (registry.url, interfaces)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mdns://localhost", "not an IPv4 address"),
        ("mdns://[::1]", "IPv6 is not supported"),
        ("mdns://127.0.0.1:5353", "takes no port"),
        ("mdns://127.0.0.1/path", "host and \\?options only"),
        ("mdns://?ttl=3", "unknown mdns:// option"),
        ("mdns://?timeout=soon", "must be seconds"),
        ("mdns://?timeout=-1", "browse_timeout must be >= 0"),
        ("mdns://?lookup_timeout=-0.5", "lookup_timeout must be >= 0"),
        ("mdns://?lookup_timeout=", "must be seconds, got ''"),
        ("mdns://?interfaces=", "empty"),
        ("mdns://?fetch_timeout=0", "fetch_timeout must be > 0"),
        ("mdns://127.0.0.1?interfaces=127.0.0.1", "not both"),
        ("mdns://?interfaces=0.0.0.0,127.0.0.1", "cannot be listed with others"),
        ("mdns://?interfaces", "bad query field"),
        ("mdns://?domain=Micro", "lower-case letters"),
        ("mdns://?domain=-edge", "not at either end"),
        ("mdns://?domain=two--hyphens", "never two in a row"),
        ("mdns://?domain=sixteen-letters0", "1 to 15"),
    ],
)
def test_invalid_url(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MDNSRegistry.from_url(url)


def test_a_domain_is_its_own_service_type() -> None:
    registry = MDNSRegistry.from_url("mdns://127.0.0.1?domain=staging")
    assert (registry.domain, registry.service_type) == ("staging", "_staging._tcp.local.")
    assert MDNSRegistry.from_url(registry.url).service_type == "_staging._tcp.local."
    assert MDNSRegistry().service_type == "_micro._tcp.local."


async def test_registries_see_only_the_nodes_of_their_domain() -> None:
    """Two systems on one machine: same service name, different domains, no crosstalk."""
    name = unique("twin")
    ours, theirs = mdns_domain(), new_mdns_domain()
    async with (
        MDNSRegistry(interfaces=LOOPBACK, domain=ours) as here,
        MDNSRegistry(interfaces=LOOPBACK, domain=theirs) as there,
        MDNSRegistry(interfaces=LOOPBACK, domain=theirs) as observer,
    ):
        mine, other = make_service(name), make_service(name)
        await here.register(mine, ttl=30)
        await there.register(other, ttl=30)
        assert await ids_of(observer, name) == node_ids([other])
        assert await ids_of(here, name) == node_ids([mine])


def test_invalid_options() -> None:
    with pytest.raises(ValueError, match="list of IPv4 addresses"):
        MDNSRegistry(interfaces="127.0.0.1")
    with pytest.raises(ValueError, match="empty"):
        MDNSRegistry(interfaces=[])


async def test_invalid_registrations() -> None:
    async with loopback_registry() as registry:
        service = make_service(unique())
        with pytest.raises(ValueError, match="ttl must be positive"):
            await registry.register(service, ttl=0)
        service.nodes[0].address = "127.0.0.1"
        with pytest.raises(ValueError, match="expected host:port"):
            await registry.register(service)
        service.nodes[0].address = "127.0.0.1:80"
        service.name = "n" * 300
        with pytest.raises(ValueError, match="too long for mDNS"):
            await registry.register(service)


@pytest.mark.parametrize(
    ("host", "interfaces"),
    [
        ("127.0.0.1", ["127.0.0.1"]),
        ("127.0.0.2", ["127.0.0.1"]),
        ("10.0.0.2", ["10.0.0.2", "127.0.0.1"]),
        ("0.0.0.0", ["0.0.0.0"]),
        ("::1", ["127.0.0.1"]),
        ("localhost", ["127.0.0.1"]),
    ],
)
def test_interfaces_follow_the_node_address(host: str, interfaces: list[str]) -> None:
    assert _interfaces_for(host) == interfaces


async def test_a_loopback_node_opens_mdns_on_loopback_only() -> None:
    registry = MDNSRegistry(domain=mdns_domain())
    service = make_service(unique())
    async with registry:
        assert registry.interfaces is None  # opened lazily, on first use
        await registry.register(service, ttl=30)
        assert registry.interfaces == ["127.0.0.1"]
        assert registry._zeroconf is not None
        senders = registry._zeroconf.zeroconf.engine.senders
        assert [sender.sock_name[0] for sender in senders] == ["127.0.0.1"]


async def test_a_pure_client_opens_mdns_on_loopback() -> None:
    async with MDNSRegistry(lookup_timeout=0, domain=mdns_domain()) as client:
        assert await client.get_service(unique("missing")) == []
        assert client.interfaces == ["127.0.0.1"]
