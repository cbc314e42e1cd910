"""Retries, failover, ejection, the registry cache and service.http(), against real servers in
this process (memory registry)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI, Request
from pydantic import BaseModel

from asgi_micro import MicroRouter, Service, errors
from asgi_micro.client import Client
from asgi_micro.client.retry import Backoff, retryable
from asgi_micro.client.selector import RoundRobin
from asgi_micro.context import current_context
from asgi_micro.fastapi import CurrentService
from asgi_micro.registry import Endpoint, Node
from asgi_micro.registry import Service as ServiceRecord
from asgi_micro.registry.memory import MemoryRegistry
from tests.helpers import eventually, free_port, serve


class Ping(BaseModel):
    fail_with: int = 0


class Pong(BaseModel):
    node: str


def node_app(service: Service) -> FastAPI:
    router = MicroRouter("Echo")

    @router.rpc(idempotent=True)
    async def safe(req: Ping, me: CurrentService) -> Pong:
        if req.fail_with:
            raise errors.error_for_status(req.fail_with)("asked to fail")
        return Pong(node=me.id)

    @router.rpc()
    async def unsafe(req: Ping, me: CurrentService) -> Pong:
        if req.fail_with:
            raise errors.error_for_status(req.fail_with)("asked to fail")
        return Pong(node=me.id)

    app = FastAPI(lifespan=service.lifespan)
    app.include_router(router)

    @app.get("/whoami")
    async def whoami(request: Request) -> dict[str, str]:
        context = current_context()
        return {"node": service.id, "tenant": context.metadata.get("tenant", "") if context else ""}

    return app


@contextlib.asynccontextmanager
async def nodes(registry: MemoryRegistry, count: int) -> AsyncIterator[list[Service]]:
    services = [Service("echo", registry=registry, drain_grace=0.2) for _ in range(count)]
    async with contextlib.AsyncExitStack() as stack:
        for service in services:
            await stack.enter_async_context(serve(node_app(service)))
            await service.wait_registered()
        yield services


async def register_dead_node(registry: MemoryRegistry, name: str = "echo") -> Node:
    """A node in the registry whose port refuses connections: a process that died."""
    dead = Node(id="dead-node", address=f"127.0.0.1:{free_port()}")
    [live] = await registry.get_service(name)
    await registry.register(
        ServiceRecord(name=name, version=live.version, endpoints=live.endpoints, nodes=[dead])
    )
    return dead


async def test_connection_failures_fail_over_and_eject(caplog: pytest.LogCaptureFixture) -> None:
    registry = MemoryRegistry()
    async with nodes(registry, 1) as [live]:
        dead = await register_dead_node(registry)
        client = Client(registry=registry, strategy=RoundRobin(), retries=1)
        try:
            replies = [await client.call("echo", "Echo.Unsafe", {}) for _ in range(10)]
            assert {reply["node"] for reply in replies} == {live.id}  # nothing was lost
            assert client.outliers.ejected(dead)
        finally:
            await client.aclose()


class ClosingServer:
    """Reads a request and closes the connection: the request was sent and may have run."""

    def __init__(self) -> None:
        self.requests = 0
        self.port = free_port()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.requests += 1
        writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        server = await asyncio.start_server(self.handle, "127.0.0.1", self.port)
        async with server:
            yield


async def test_only_idempotent_calls_are_retried_after_sending() -> None:
    registry = MemoryRegistry()
    closing = ClosingServer()
    async with nodes(registry, 1) as [live], closing.running():
        [record] = await registry.get_service("echo")
        broken = Node(id="broken", address=f"127.0.0.1:{closing.port}")
        await registry.register(
            ServiceRecord(
                name="echo", version=record.version, endpoints=record.endpoints, nodes=[broken]
            )
        )
        client = Client(registry=registry, strategy=RoundRobin(), retries=2)
        try:
            outcomes: list[str] = []
            for _ in range(6):
                try:
                    outcomes.append((await client.call("echo", "Echo.Unsafe", {}))["node"])
                except errors.ConnectionLost as exc:
                    outcomes.append(f"lost: {exc.detail}")
            lost = [outcome for outcome in outcomes if outcome.startswith("lost")]
            assert lost  # sent to the broken node: not repeated
            assert all("may have been processed" in outcome for outcome in lost)
            assert closing.requests == len(lost)
            for _ in range(6):  # idempotent: retried on the live node, never lost
                assert (await client.call("echo", "Echo.Safe", {}))["node"] == live.id
        finally:
            await client.aclose()


async def test_server_statuses_are_retried_for_idempotent_calls_only() -> None:
    registry = MemoryRegistry()
    async with nodes(registry, 2):
        client = Client(registry=registry, retries=3, backoff=Backoff(initial=0.001))
        try:
            with pytest.raises(errors.ServiceUnavailable):
                await client.call("echo", "Echo.Safe", {"fail_with": 503})
            with pytest.raises(errors.ServiceUnavailable):
                await client.call("echo", "Echo.Unsafe", {"fail_with": 503})
            with pytest.raises(errors.InternalServerError):
                await client.call("echo", "Echo.Safe", {"fail_with": 500})
        finally:
            await client.aclose()


def test_what_is_retryable() -> None:
    sent = errors.ConnectionLost("broke", id="x")
    assert retryable(errors.ConnectionFailed("refused"), idempotent=False, from_client="c")
    assert not retryable(sent, idempotent=False, from_client="c")
    assert retryable(sent, idempotent=True, from_client="c")
    assert retryable(errors.GatewayTimeout(id="svc"), idempotent=True, from_client="c")
    assert not retryable(errors.Timeout(id="c"), idempotent=True, from_client="c")  # our deadline
    assert not retryable(errors.InternalServerError(id="svc"), idempotent=True, from_client="c")


async def test_retries_never_outlive_the_deadline() -> None:
    registry = MemoryRegistry()
    for index in range(3):
        await registry.register(
            ServiceRecord(
                name="gone",
                endpoints=[
                    Endpoint("Gone.Call", metadata={"path": "/gone/call", "idempotent": "true"})
                ],
                nodes=[Node(id=f"gone-{index}", address=f"127.0.0.1:{free_port()}")],
            )
        )
    client = Client(registry=registry, retries=1000, backoff=Backoff(initial=0.05, maximum=0.2))
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises((errors.ConnectionFailed, errors.Timeout)):
            await client.call("gone", "Gone.Call", {}, timeout=0.4)
    finally:
        await client.aclose()
    assert loop.time() - started < 0.4 + 0.1


def test_backoff_is_exponential_with_jitter() -> None:
    backoff = Backoff(initial=0.1, multiplier=2, maximum=0.3)
    assert all(0 <= backoff.delay(1) <= 0.1 for _ in range(100))
    assert all(0 <= backoff.delay(2) <= 0.2 for _ in range(100))
    assert max(backoff.delay(5) for _ in range(200)) <= 0.3
    assert len({backoff.delay(3) for _ in range(20)}) > 10
    with pytest.raises(ValueError, match="multiplier"):
        Backoff(multiplier=0.5)


class CountingRegistry(MemoryRegistry):
    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0
        self.broken = False

    async def get_service(self, name: str) -> list[ServiceRecord]:
        self.lookups += 1
        if self.broken:
            raise ConnectionError("registry down")
        return await super().get_service(name)


async def test_cache_watch_and_stale_answers() -> None:
    registry = CountingRegistry()
    async with nodes(registry, 1) as [first]:
        # Refreshed after 2 s: what comes before the sleep must fit in it on a loaded machine
        # (0.2 s did not: a CI run's 20 calls outlasted it, and the cache looked again).
        client = Client(registry=registry, strategy=RoundRobin(), cache_refresh=2.0)
        try:
            for _ in range(20):
                await client.call("echo", "Echo.Safe", {})
            assert registry.lookups == 1  # answered from the cache

            async with nodes(registry, 1) as [second]:  # a new node arrives through the watch

                async def both_seen() -> bool:
                    seen = {(await client.call("echo", "Echo.Safe", {}))["node"] for _ in range(4)}
                    return seen == {first.id, second.id}

                await eventually(both_seen, message="the new node was not picked up")
                assert registry.lookups == 1

            await asyncio.sleep(2.1)  # past the refresh interval, the registry breaks
            registry.broken = True
            assert (await client.call("echo", "Echo.Safe", {}))[
                "node"
            ] == first.id  # stale beats nothing
            assert registry.lookups >= 2
        finally:
            await client.aclose()


async def test_a_draining_node_stops_receiving_calls_without_errors() -> None:
    registry = MemoryRegistry()
    async with nodes(registry, 2) as [staying, leaving]:
        client = Client(registry=registry, strategy=RoundRobin())
        failures: list[Exception] = []
        answered: list[str] = []
        stop = asyncio.Event()

        async def caller() -> None:
            while not stop.is_set():
                try:
                    answered.append((await client.call("echo", "Echo.Unsafe", {}))["node"])
                except Exception as exc:
                    failures.append(exc)

        try:
            workers = [asyncio.create_task(caller()) for _ in range(4)]
            await asyncio.sleep(0.2)
            await leaving.drain()
            mark = len(answered)
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*workers)
        finally:
            await client.aclose()
        assert failures == []
        assert leaving.id in answered[:mark]
        assert set(answered[mark + 8 :]) == {staying.id}  # after the few already in flight


async def test_service_http_resolves_names_and_carries_the_context() -> None:
    registry = MemoryRegistry()
    async with nodes(registry, 1) as [live]:
        dead = await register_dead_node(registry)
        async with Service("caller", registry=registry) as caller:
            caller.client.strategy = RoundRobin()
            async with caller.http(headers={"micro-tenant": "acme"}) as http:
                for _ in range(6):  # GET is idempotent: the dead node costs a retry, not an error
                    response = await http.get("http://echo/whoami")
                    assert response.json() == {"node": live.id, "tenant": "acme"}
                assert caller.client.outliers.ejected(dead)
                direct = await http.get(f"http://{live.node.address}/whoami")  # type: ignore[union-attr]
                assert direct.json()["node"] == live.id
                with pytest.raises(httpx.ConnectError, match="no nodes"):
                    await http.get("http://nobody/")
