"""The dependencies of asgi_micro.fastapi, on the RPC fast path and through FastAPI."""

from __future__ import annotations

from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI
from pydantic import BaseModel
from typer.testing import CliRunner

from asgi_micro import MicroRouter, Service
from asgi_micro.cli import app as cli
from asgi_micro.fastapi import Client, Context, CurrentService, Store
from asgi_micro.registry.memory import MemoryRegistry
from asgi_micro.store.memory import MemoryStore
from tests.helpers import serve


class Put(BaseModel):
    key: str
    value: str


class Stored(BaseModel):
    key: str
    value: str
    version: int
    table: str


def prefix() -> str:
    return ""


def build(service: Service) -> FastAPI:
    router = MicroRouter("Kv")

    @router.rpc()
    async def put(req: Put, store: Store) -> Stored:  # fast path: micro dependencies only
        record = await store.write(req.key, req.value.encode())
        return Stored(
            key=record.key, value=req.value, version=record.version, table=store.table_name
        )

    @router.rpc()
    async def put_slow(
        req: Put, store: Store, mark: Annotated[str, Depends(prefix)], ctx: Context
    ) -> Stored:  # a plain Depends sends this one through FastAPI
        record = await store.write(mark + req.key, req.value.encode())
        return Stored(
            key=record.key, value=req.value, version=record.version, table=store.table_name
        )

    @router.rpc()
    async def whoami(me: CurrentService, client: Client) -> Stored:
        assert client is me.client
        return Stored(key=me.name, value=me.id, version=0, table="")

    app = FastAPI(lifespan=service.lifespan)
    app.include_router(router)
    return app


async def test_store_dependency_is_the_services_table() -> None:
    backend = MemoryStore()
    service = Service("kv", registry=MemoryRegistry(), store=backend)
    async with (
        serve(build(service)) as address,
        httpx.AsyncClient(base_url=f"http://{address}") as http,
    ):
        first = (await http.post("/kv/put", json={"key": "a", "value": "1"})).json()
        second = (await http.post("/kv/put_slow", json={"key": "a", "value": "2"})).json()
        me = (await http.post("/kv/whoami")).json()
        [record] = await service.store.read("a")
        other = await backend.database("micro").table("elsewhere").list()
    assert first == {"key": "a", "value": "1", "version": 1, "table": "kv"}
    assert second == {"key": "a", "value": "2", "version": 2, "table": "kv"}
    assert record.value == b"2"
    assert other == []
    assert me["key"] == "kv"
    assert me["value"] == service.id


async def test_a_store_from_a_url_follows_the_service_lifecycle() -> None:
    async with Service("kv", registry=MemoryRegistry(), store="memory://") as service:
        await service.store.write("k", b"v")
        assert (await service.store.read("k"))[0].value == b"v"
    assert service.store.table_name == "kv"
    with pytest.raises(RuntimeError, match="not started"):
        await service.store.read("k")


async def test_a_store_given_as_an_object_is_started_and_left_to_its_owner() -> None:
    """Two services sharing one backend: the one stopping first leaves it to the other."""
    backend = MemoryStore()
    registry = MemoryRegistry()
    async with Service("first", registry=registry, store=backend) as first:
        await first.store.write("k", b"v")
    async with backend, Service("second", registry=registry, store=backend) as second:
        assert await backend.table("first").read("k")
        await second.store.write("k", b"w")
    with pytest.raises(RuntimeError, match="not started"):
        await backend.read("k")


def test_store_cli_is_mounted() -> None:
    result = CliRunner().invoke(cli, ["store", "--help"])
    assert result.exit_code == 0
    for command in ("read", "write", "delete", "list"):
        assert command in result.output
