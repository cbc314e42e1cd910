"""Service: configuration, registration with TTL and heartbeat, deregister-first stop."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI

from asgi_micro import Service
from asgi_micro.registry.memory import MemoryRegistry
from tests.helpers import serve


def slow_app(service: Service, seconds: float = 0.5) -> FastAPI:
    app = FastAPI(lifespan=service.lifespan)

    @app.get("/slow")
    async def slow() -> dict[str, bool]:
        await asyncio.sleep(seconds)
        return {"done": True}

    return app


def test_node_id_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MICRO_REGISTRY", raising=False)
    service = Service("greeter")
    assert service.id.startswith("greeter-")
    assert len(service.id) == len("greeter-") + 36
    assert service.registry.url.startswith("mdns://")
    assert (service.register_ttl, service.register_interval) == (30.0, 10.0)
    assert service.version == "latest"


def test_environment_chooses_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICRO_REGISTRY", "memory://")
    monkeypatch.setenv("MICRO_ADDRESS", "127.0.0.1:9000")
    monkeypatch.setenv("MICRO_REGISTER_TTL", "6")
    monkeypatch.setenv("MICRO_REGISTER_INTERVAL", "2")
    service = Service("greeter")
    assert isinstance(service.registry, MemoryRegistry)
    assert service.address == "127.0.0.1:9000"
    assert (service.register_ttl, service.register_interval) == (6.0, 2.0)
    explicit = Service("greeter", registry="mdns://", register_ttl=9, register_interval=3)
    assert explicit.registry.url.startswith("mdns://")
    assert explicit.register_ttl == 9


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": ""}, "service name"),
        ({"name": "has space"}, "service name"),
        ({"name": "ok", "register_ttl": 0}, "positive"),
        ({"name": "ok", "register_ttl": 5, "register_interval": 5}, "shorter than register_ttl"),
        ({"name": "ok", "registry": "nope://"}, "unknown registry scheme 'nope'"),
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Service(**kwargs)  # type: ignore[arg-type]


async def test_client_only_service_registers_nothing() -> None:
    registry = MemoryRegistry()
    async with Service("script", registry=registry) as service:
        assert service.status == "serving"
        assert await registry.list_services() == []
    assert service.status == "stopped"


async def test_heartbeat_outlives_the_ttl() -> None:
    registry = MemoryRegistry()
    service = Service("beat", registry=registry, register_ttl=0.6, register_interval=0.2)
    async with serve(slow_app(service)):
        await service.wait_registered()
        await asyncio.sleep(1.5)  # 2.5 TTLs
        [record] = await registry.get_service("beat")
        assert [node.id for node in record.nodes] == [service.id]
    assert await registry.get_service("beat") == []


async def test_a_node_that_stops_heartbeating_expires() -> None:
    registry = MemoryRegistry()
    service = Service("lapse", registry=registry, register_ttl=0.5, register_interval=0.2)
    async with serve(slow_app(service)):
        await service.wait_registered()
        heartbeat = service.registrar._heartbeat
        assert heartbeat is not None
        heartbeat.cancel()  # as if the process hung
        await asyncio.sleep(0.8)
        assert await registry.get_service("lapse") == []


async def test_stop_deregisters_before_draining() -> None:
    registry = MemoryRegistry()
    service = Service("drain", registry=registry)
    async with serve(slow_app(service, seconds=0.6)) as address:
        await service.wait_registered()
        async with httpx.AsyncClient(base_url=f"http://{address}") as http:
            request = asyncio.create_task(http.get("/slow"))
            while service.stats.in_flight == 0:
                await asyncio.sleep(0.01)
            stopping = asyncio.create_task(service.stop())
            await asyncio.sleep(0.1)
            # Gone from the registry while the request is still running...
            assert await registry.get_service("drain") == []
            assert not stopping.done()
            assert service.status == "draining"
            # ...which finishes normally before stop returns.
            response = await request
            await stopping
    assert response.json() == {"done": True}


async def test_drain_answers_health_as_draining() -> None:
    registry = MemoryRegistry()
    service = Service("health", registry=registry, drain_grace=0.3)
    async with (
        serve(slow_app(service)) as address,
        httpx.AsyncClient(base_url=f"http://{address}") as http,
    ):
        await service.wait_registered()
        draining = asyncio.create_task(service.drain())
        await asyncio.sleep(0.05)
        health = await http.get("/_micro/health")
        assert (health.status_code, health.json()["status"]) == (503, "draining")
        assert health.headers["connection"] == "close"
        assert await registry.get_service("health") == []
        await draining


async def test_the_address_is_found_without_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MICRO_ADDRESS", raising=False)
    registry = MemoryRegistry()
    service = Service("detect", registry=registry)
    assert service.address is None
    async with serve(slow_app(service)) as address:
        await service.wait_registered()
        [record] = await registry.get_service("detect")
    assert record.nodes[0].address == address


async def test_wildcard_address_is_advertised_as_a_real_one() -> None:
    registry = MemoryRegistry()
    service = Service("wild", registry=registry, address="0.0.0.0:8123")
    service.attach(FastAPI())
    async with service:
        [record] = await registry.get_service("wild")
    host, _, port = record.nodes[0].address.rpartition(":")
    assert port == "8123"
    assert host not in ("0.0.0.0", "")


async def test_failed_start_is_reported() -> None:
    service = Service("bad", registry=MemoryRegistry(), address="no-port")
    service.attach(FastAPI())
    with pytest.raises(ValueError, match="host:port"):
        await service.start()


async def test_stopping_one_service_leaves_the_others_in_a_shared_registry() -> None:
    registry = MemoryRegistry()
    first = Service("first", registry=registry, address="127.0.0.1:8101", grpc=False)
    second = Service("second", registry=registry, address="127.0.0.1:8102", grpc=False)
    for service in (first, second):
        service.attach(FastAPI())
    async with second:
        async with first:
            assert {s.name for s in await registry.list_services()} == {"first", "second"}
        # The registry was given, not made: stopping first withdraws its node and no more.
        assert [s.name for s in await registry.list_services()] == ["second"]
    assert await registry.list_services() == []


async def test_a_part_that_fails_to_start_stops_those_started_before_it() -> None:
    store = "memory://"
    service = Service("partial", registry=MemoryRegistry(), store=store, address="nope", grpc=False)
    service.attach(FastAPI())
    with pytest.raises(ValueError, match="host:port"):
        await service.start()
    assert service.status == "stopped"
    with pytest.raises(RuntimeError, match="not started"):
        await service.store.read("k")
    service.registrar.address = "127.0.0.1:8103"
    async with service:  # and it can start once the address is right
        assert service.status == "serving"


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICRO_PROPAGATE", "Tenant, request-id")
    assert Service("envy").propagate == ("tenant", "request-id")
    assert Service("envy", propagate=["*"]).propagate == ("*",)
