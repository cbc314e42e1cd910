"""Which handlers gRPC serves, under which names, and how a service configures its gRPC side."""

from __future__ import annotations

import logging

import grpc
import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel

from asgi_micro import MicroRouter, Service
from asgi_micro.grpc import grpc_schema
from asgi_micro.protobuf import ProtoSchemaError
from asgi_micro.registry.memory import MemoryRegistry
from tests.helpers import free_port

from .conftest import Echo, serving


class Grid(BaseModel):
    cells: list[list[int]]


def allowed() -> None:
    """A dependency standing for authentication."""


def shop_app() -> FastAPI:
    shop = MicroRouter("Shop")

    @shop.rpc()
    async def buy(req: Echo) -> Echo:
        return Echo(text=f"bought {req.text}")

    @shop.rpc()
    async def inspect(req: Echo, request: Request) -> Echo:
        return Echo(text=request.url.path)

    @shop.rpc()
    async def grid(req: Grid) -> Grid:
        return req

    admin = MicroRouter("Admin")

    @admin.rpc()
    async def wipe(req: Echo) -> Echo:
        return Echo(text="wiped")

    app = FastAPI()
    app.include_router(shop)
    app.include_router(admin, dependencies=[Depends(allowed)])
    return app


def test_handlers_that_need_fastapi_or_cannot_be_protobuf_stay_http_only() -> None:
    schema = grpc_schema(shop_app(), package="shop")
    assert schema.paths == {"Shop.Buy": "/shop.Shop/Buy"}
    assert "Request" in schema.skipped["Shop.Inspect"]
    assert "Grid.cells" in schema.skipped["Shop.Grid"]
    assert "dependencies" in schema.skipped["Admin.Wipe"]
    assert schema.proto.service_names == ["shop.Shop"]


def clashing_app() -> FastAPI:
    first, second = MicroRouter("Shop"), MicroRouter("Shop")

    @first.rpc()
    async def buy(req: Echo) -> Echo:
        return req

    @second.rpc(name="Buy")
    async def buy_again(req: Echo) -> Echo:
        return req

    app = FastAPI()
    app.include_router(first)
    app.include_router(second, prefix="/again")
    return app


async def test_two_handlers_of_one_name_are_an_error() -> None:
    with pytest.raises(ProtoSchemaError, match=r"two handlers are named Shop\.Buy"):
        grpc_schema(clashing_app(), package="shop")

    service = Service("shop", registry=MemoryRegistry(), address="127.0.0.1:1")
    service.attach(clashing_app())
    try:
        with pytest.raises(ProtoSchemaError, match=r"Service\(grpc=False\)"):
            await service.start()
    finally:
        await service.stop()


async def test_a_service_serves_its_package_and_logs_what_stays_http_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = shop_app()
    service = Service(
        "shop", registry=MemoryRegistry(), grpc_package="acme.shop.v1", max_message_size=1024
    )
    app.router.lifespan_context = service.lifespan
    caplog.set_level(logging.WARNING, logger="asgi_micro")
    async with serving(app, service) as address:
        assert service.grpc_server is not None
        async with grpc.aio.insecure_channel(service.grpc_server.address) as channel:
            buy = channel.unary_unary("/acme.shop.v1.Shop/Buy")
            assert await buy(b"\n\x03tea", timeout=10) == b"\n\nbought tea"
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await channel.unary_unary("/acme.shop.v1.Admin/Wipe")(b"", timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await buy(b"\n\xf0\x0f" + b"x" * 2032, timeout=10)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        async with httpx.AsyncClient(base_url=f"http://{address}", trust_env=False) as http:
            response = await http.post("/admin/wipe", json={})
            assert response.json() == {"text": "wiped", "seconds": 0.0}
        endpoints = {endpoint.name: endpoint.metadata for endpoint in service.endpoints}
    assert endpoints["Shop.Buy"]["grpc"] == "/acme.shop.v1.Shop/Buy"
    assert "grpc" not in endpoints["Admin.Wipe"]
    for name in ("Shop.Inspect", "Shop.Grid", "Admin.Wipe"):
        assert f"shop: {name} is served over HTTP only" in caplog.text


async def test_http_protobuf_and_grpc_share_the_converters() -> None:
    app = shop_app()
    service = Service("shop", registry=MemoryRegistry())
    app.router.lifespan_context = service.lifespan
    async with serving(app, service):
        assert service.grpc_server is not None
        proto = service.grpc_server.schema.proto
        rpc = service.grpc_server.schema.methods["Shop.Buy"].rpc
        assert rpc.request is not None
        assert rpc.request.extension["protobuf"] is proto.converter(Echo)


async def test_grpc_can_be_turned_off_or_put_on_a_chosen_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MICRO_GRPC", "false")
    off = Service("shop", registry=MemoryRegistry())
    app = shop_app()
    app.router.lifespan_context = off.lifespan
    async with serving(app, off):
        assert off.grpc_server is None
        assert off.node is not None
        assert "grpc" not in off.node.metadata
        assert all("grpc" not in endpoint.metadata for endpoint in off.endpoints)

    monkeypatch.delenv("MICRO_GRPC")
    port = free_port()
    monkeypatch.setenv("MICRO_GRPC_ADDRESS", f"127.0.0.1:{port}")
    chosen = Service("shop", registry=MemoryRegistry(), grpc_package="acme")
    app = shop_app()
    app.router.lifespan_context = chosen.lifespan
    async with serving(app, chosen):
        assert chosen.grpc_server is not None
        assert chosen.grpc_server.address == f"127.0.0.1:{port}"
        assert chosen.node is not None
        assert chosen.node.metadata["grpc"] == f"127.0.0.1:{port}"
