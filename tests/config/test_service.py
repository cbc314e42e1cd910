"""``Service(config=Settings)``: the config starts after the store, follows the service's
store records, and reaches handlers as the ``Config[Settings]`` dependency."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from asgi_micro import MicroRouter, Service
from asgi_micro.config import Config as ConfigPart
from asgi_micro.config import StoreSource, Values
from asgi_micro.fastapi import Config
from asgi_micro.registry.memory import MemoryRegistry
from tests.config.models import Settings
from tests.helpers import serve


class Greeting(BaseModel):
    message: str


def build(service: Service) -> FastAPI:
    router = MicroRouter("Greeter")

    @router.rpc()
    async def greet(settings: Config[Settings]) -> Greeting:
        return Greeting(message=f"{settings.greeting} (pool {settings.db.pool})")

    app = FastAPI(lifespan=service.lifespan)
    app.include_router(router)
    return app


async def test_handlers_see_the_config_in_force() -> None:
    service = Service(
        "greeter", registry=MemoryRegistry(), store="memory://", broker="memory://", config=Settings
    )
    async with (
        serve(build(service)) as address,
        httpx.AsyncClient(base_url=f"http://{address}") as http,
    ):
        assert service.config is not None
        assert (await http.post("/greeter/greet")).json() == {"message": "hi (pool 5)"}
        changes = service.config.watch("greeting")
        await service.store.write_json("config/greeting", "hello")
        await asyncio.wait_for(anext(changes), 1.0)
        assert (await http.post("/greeter/greet")).json() == {"message": "hello (pool 5)"}
        [source] = [s for s in service.config.sources if isinstance(s, StoreSource)]
        assert (
            service.config.source_of("greeting") == source.name == ("store:micro/greeter/config/")
        )
    with pytest.raises(RuntimeError, match="not started"):
        await service.store.read("config/greeting")


async def test_a_config_given_is_started_and_left_to_its_owner() -> None:
    config = ConfigPart(Settings, sources=[Values({"greeting": "given"})])
    async with Service("greeter", registry=MemoryRegistry(), store="memory://", config=config) as s:
        assert s.config is config
        assert config.value.greeting == "given"
    assert config._started  # the owner stops it
    await config.stop()


async def test_a_service_without_config_says_how_to_give_one() -> None:
    service = Service("greeter", registry=MemoryRegistry(), store="memory://", broker="memory://")
    async with (
        serve(build(service)) as address,
        httpx.AsyncClient(base_url=f"http://{address}") as http,
    ):
        reply = await http.post("/greeter/greet")
    assert reply.status_code == 500
