"""MicroMiddleware on an existing app: one line, no other change."""

from __future__ import annotations

import asyncio
import logging

import httpx
import orjson
import pytest
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from asgi_micro import MicroMiddleware, Service, current_context
from asgi_micro.registry.memory import MemoryRegistry
from tests.helpers import serve


class Item(BaseModel):
    name: str
    price: float


def existing_app() -> FastAPI:
    """An app written without asgi-micro in mind."""
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def read_item(item_id: int, q: str | None = None) -> Item:
        if item_id == 0:
            raise HTTPException(status_code=403, detail="item 0 is private")
        return Item(name=f"item {item_id}", price=1.5)

    @app.post("/items")
    async def create_item(item: Item) -> Item:
        return item

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        await asyncio.sleep(5)
        return {}

    @app.get("/context")
    async def context() -> dict[str, str]:
        current = current_context()
        assert current is not None
        return current.metadata

    @app.get("/custom-error")
    async def custom_error() -> JSONResponse:
        return JSONResponse({"error": "our own format"}, status_code=409)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("database password is hunter2")

    return app


@pytest.fixture
async def registry() -> MemoryRegistry:
    return MemoryRegistry()


async def test_one_line_adoption_registers_every_route(registry: MemoryRegistry) -> None:
    app = existing_app()
    service = Service("inventory", version="2.1.0", registry=registry)
    app.add_middleware(MicroMiddleware, service=service)

    async with serve(app) as address:
        await service.wait_registered()
        [record] = await registry.get_service("inventory")
        async with httpx.AsyncClient(base_url=f"http://{address}") as http:
            health = await http.get("/_micro/health")

    assert record.version == "2.1.0"
    assert [node.address for node in record.nodes] == [address]
    endpoints = {endpoint.name: endpoint for endpoint in record.endpoints}
    assert set(endpoints) == {
        "GET /items/{item_id}",
        "POST /items",
        "GET /slow",
        "GET /context",
        "GET /custom-error",
        "GET /boom",
    }
    read = endpoints["GET /items/{item_id}"]
    assert read.metadata == {
        "kind": "http",
        "method": "GET",
        "path": "/items/{item_id}",
        "idempotent": "true",
        "parameters": "path:item_id,query:q",
    }
    assert read.response is not None
    assert read.response["$ref"] == "#/$defs/Item"
    assert set(read.response["$defs"]["Item"]["properties"]) == {"name", "price"}
    create = endpoints["POST /items"]
    assert create.request is not None
    assert "Item" in create.request["$defs"]
    assert health.status_code == 200
    assert health.json()["status"] == "serving"
    assert health.json()["node"] == service.id


@pytest.fixture
async def inventory(registry: MemoryRegistry) -> object:
    app = existing_app()
    service = Service("inventory", registry=registry, address="127.0.0.1:1")
    app.add_middleware(MicroMiddleware, service=service)
    async with serve(app) as address, httpx.AsyncClient(base_url=f"http://{address}") as http:
        yield http, service


async def test_errors_take_the_micro_shape(inventory: tuple[httpx.AsyncClient, Service]) -> None:
    http, _ = inventory
    not_found = await http.get("/nowhere")
    assert not_found.json() == {
        "id": "inventory",
        "code": 404,
        "detail": "Not Found",
        "status": "Not Found",
    }
    invalid = await http.post("/items", json={"name": "x", "price": "free"})
    assert invalid.status_code == 400
    assert (
        invalid.json()["detail"]
        == "body.price: Input should be a valid number, unable to parse string as a number"
    )
    forbidden = await http.get("/items/0")
    assert (forbidden.status_code, forbidden.json()["detail"]) == (403, "item 0 is private")
    assert forbidden.headers["content-length"] == str(len(forbidden.content))


async def test_the_apps_own_error_format_is_kept(
    inventory: tuple[httpx.AsyncClient, Service],
) -> None:
    http, _ = inventory
    response = await http.get("/custom-error")
    assert (response.status_code, response.json()) == (409, {"error": "our own format"})


async def test_unhandled_exception_is_500_and_logged(
    inventory: tuple[httpx.AsyncClient, Service], caplog: pytest.LogCaptureFixture
) -> None:
    http, service = inventory
    with caplog.at_level(logging.ERROR, logger="asgi_micro"):
        response = await http.get("/boom")
    assert response.status_code == 500
    assert response.json()["code"] == 500
    assert "hunter2" not in response.text
    assert "hunter2" in caplog.text
    assert service.stats.errors == 1


async def test_metadata_and_deadline(inventory: tuple[httpx.AsyncClient, Service]) -> None:
    http, _ = inventory
    context = await http.get("/context", headers={"Micro-Tenant": "acme", "Micro-Request-Id": "r1"})
    assert context.json() == {"tenant": "acme", "request-id": "r1"}
    loop = asyncio.get_running_loop()
    started = loop.time()
    slow = await http.get("/slow", headers={"Micro-Timeout": "150"})
    assert slow.status_code == 408
    assert slow.json()["status"] == "Request Timeout"
    assert loop.time() - started < 1.0


@pytest.mark.parametrize("timeout", ["-5", "soon", "nan"])
async def test_a_malformed_deadline_is_a_bad_request(
    inventory: tuple[httpx.AsyncClient, Service], timeout: str
) -> None:
    """``Micro-Timeout: -5`` was ignored where ``0`` gave 408."""
    http, service = inventory
    response = await http.get("/items/1", headers={"Micro-Timeout": timeout})
    assert response.status_code == 400
    assert response.json()["id"] == "inventory"
    assert "Micro-Timeout" in response.json()["detail"]
    assert service.stats.errors == 0


async def test_stats_count_requests(inventory: tuple[httpx.AsyncClient, Service]) -> None:
    http, _ = inventory
    for item_id in (1, 2, 3):
        await http.get(f"/items/{item_id}")
    stats = (await http.get("/_micro/stats")).json()
    assert stats["requests"] == 3
    assert stats["errors"] == 0
    assert stats["in_flight"] == 0
    assert stats["memory"] > 0
    assert stats["uptime"] >= 0


async def test_internal_routes_are_read_only(inventory: tuple[httpx.AsyncClient, Service]) -> None:
    http, _ = inventory
    assert (await http.post("/_micro/health")).status_code == 405
    assert (await http.get("/_micro/nothing")).status_code == 404
    record = (await http.get("/_micro/registry")).json()
    assert record["name"] == "inventory"
    assert record["nodes"][0]["address"] == "127.0.0.1:1"


async def test_starlette_app_adopts_too(registry: MemoryRegistry) -> None:
    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hi")

    service = Service("plain", registry=registry)
    app = Starlette(routes=[Route("/hello", hello)])
    app.add_middleware(MicroMiddleware, service=service)
    async with serve(app) as address, httpx.AsyncClient(base_url=f"http://{address}") as http:
        await service.wait_registered()
        assert (await http.get("/hello")).text == "hi"
        missing = await http.get("/missing")
        [record] = await registry.get_service("plain")
    assert [e.name for e in record.endpoints] == ["GET /hello"]
    assert orjson.loads(missing.content) == {
        "id": "plain",
        "code": 404,
        "detail": "Not Found",
        "status": "Not Found",
    }


async def test_middleware_and_lifespan_together_start_once(registry: MemoryRegistry) -> None:
    service = Service("both", registry=registry)
    app = FastAPI(lifespan=service.lifespan)
    app.add_middleware(MicroMiddleware, service=service)

    @app.get("/")
    async def index() -> dict[str, int]:
        return {"ok": 1}

    async with serve(app) as address, httpx.AsyncClient(base_url=f"http://{address}") as http:
        await service.wait_registered()
        assert (await http.get("/")).json() == {"ok": 1}
        assert (await http.get("/_micro/stats")).json()["requests"] == 1  # counted once
    assert await registry.get_service("both") == []
