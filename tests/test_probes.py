"""The probes: ``/livez`` whenever the process serves; ``/readyz`` only once the node is
registered and while it is not draining, with the reason when not; both open under auth that
denies by default, where ``/_micro/metrics`` is not."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from asgi_micro import Service
from asgi_micro.registry import Service as ServiceRecord
from asgi_micro.registry.memory import MemoryRegistry
from tests.helpers import free_port, serve, until


class GatedRegistry(MemoryRegistry):
    """The memory registry, holding every registration until ``open`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.open = asyncio.Event()

    async def register(self, service: ServiceRecord, *, ttl: float | None = None) -> None:
        await self.open.wait()
        await super().register(service, ttl=ttl)


def app_of(service: Service) -> FastAPI:
    app = FastAPI(lifespan=service.lifespan)

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item": item_id}

    return app


async def probe(http: httpx.AsyncClient, address: str, path: str) -> tuple[int, Any]:
    response = await http.get(f"http://{address}{path}")
    return response.status_code, response.json()


async def test_ready_only_once_registered_and_until_draining() -> None:
    registry = GatedRegistry()
    name = f"probed-{uuid.uuid4().hex[:8]}"
    # No address given: the node registers once the server listens, so it serves first.
    service = Service(name, registry=registry, store="memory://", grpc=False, drain_grace=0)
    async with serve(app_of(service)) as address, httpx.AsyncClient() as http:
        assert await probe(http, address, "/livez") == (
            200,
            {"status": "live", "service": name, "node": service.id},
        )
        assert await probe(http, address, "/readyz") == (
            503,
            {"status": "not ready", "reason": "not registered yet", "service": name},
        )
        registry.open.set()
        await service.wait_registered(timeout=30)
        assert await probe(http, address, "/readyz") == (
            200,
            {"status": "ready", "service": name, "node": service.id},
        )
        await service.drain()
        status, body = await probe(http, address, "/readyz")
        assert (status, body["reason"]) == (503, "draining")
        assert (await http.get(f"http://{address}/livez")).status_code == 200
        assert await registry.get_service(name) == []


async def test_probes_are_read_only() -> None:
    service = Service("ro", registry=MemoryRegistry(), store="memory://", grpc=False)
    async with serve(app_of(service)) as address, httpx.AsyncClient() as http:
        response = await http.post(f"http://{address}/livez")
        assert response.status_code == 405
        assert response.json()["code"] == 405


async def test_probes_are_open_where_auth_denies_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MICRO_AUTH_DEFAULT", "deny")
    monkeypatch.setenv("MICRO_AUTH_KEYS", str(tmp_path / "keys.json"))
    port = free_port()
    service = Service(
        f"guarded-{uuid.uuid4().hex[:8]}",
        registry="memory://",
        store="memory://",
        broker="memory://",
        grpc=False,
        address=f"127.0.0.1:{port}",
    )
    assert service.guard.enforcing
    async with serve(app_of(service), port=port) as address, httpx.AsyncClient() as http:
        await until(service.registrar.registered.is_set, "the registration")
        assert (await http.get(f"http://{address}/livez")).status_code == 200
        assert (await http.get(f"http://{address}/readyz")).status_code == 200
        # The metrics are covered by the rules, as /_micro/stats is.
        assert (await http.get(f"http://{address}/_micro/metrics")).status_code == 401
        assert (await http.get(f"http://{address}/items/1")).status_code == 401
        # ...and the refusal is counted, since the metrics wrap outside auth.
        text = service.metrics.expose()[0].decode()
    assert 'rpc_method="GET /items/{item_id}"' in text
    assert 'error_type="401"' in text
