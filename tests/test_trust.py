"""A service facing the outside does not take its callers' ``Micro-*`` headers: a browser
cannot set the metadata (or the deadline) that the services behind it see."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from asgi_micro import MicroMiddleware, MicroRouter, Service
from asgi_micro.fastapi import Context
from asgi_micro.registry.memory import MemoryRegistry
from tests.helpers import serve


class Hello(BaseModel):
    name: str


class Greeting(BaseModel):
    message: str


def greeter_app(service: Service) -> FastAPI:
    router = MicroRouter("Greeter")

    @router.rpc()
    async def hello(req: Hello, ctx: Context) -> Greeting:
        greeting = ctx.metadata.get("greeting", "Hello")
        return Greeting(message=f"{greeting} {req.name} ({ctx.remaining() is not None})")

    app = FastAPI(lifespan=service.lifespan)
    app.include_router(router)
    return app


def frontend_app(service: Service) -> FastAPI:
    app = FastAPI()
    app.add_middleware(MicroMiddleware, service=service)

    @app.get("/welcome/{name}")
    async def welcome(name: str) -> Greeting:
        return await service.client.call(
            "greeter", "Greeter.Hello", {"name": name}, response_model=Greeting
        )

    return app


@contextlib.asynccontextmanager
async def frontend(trust_callers: bool) -> AsyncIterator[httpx.AsyncClient]:
    registry = MemoryRegistry()
    greeter = Service("greeter", registry=registry, grpc=False)
    # It would pass the greeting on: only trust decides whether a browser's counts.
    edge = Service(
        "frontend",
        registry=registry,
        grpc=False,
        propagate=["greeting"],
        trust_callers=trust_callers,
    )
    async with serve(greeter_app(greeter)):
        await greeter.wait_registered()  # before another server runs in this process
        async with (
            serve(frontend_app(edge)) as address,
            httpx.AsyncClient(base_url=f"http://{address}") as http,
        ):
            yield http


@pytest.mark.parametrize(
    ("trust_callers", "message"), [(False, "Hello Ada (True)"), (True, "PWNED Ada (True)")]
)
async def test_an_untrusting_service_drops_its_callers_metadata(
    trust_callers: bool, message: str
) -> None:
    async with frontend(trust_callers) as http:
        response = await http.get("/welcome/Ada", headers={"Micro-Greeting": "PWNED"})
    assert response.status_code == 200
    assert response.json() == {"message": message}


async def test_an_untrusting_service_takes_no_deadline_from_its_callers() -> None:
    async with frontend(False) as http:
        # A caller's 1 ms would fail the call; ignored, the client's own 5 s applies.
        response = await http.get("/welcome/Ada", headers={"Micro-Timeout": "1"})
    assert response.status_code == 200


@pytest.mark.parametrize("transport", ["http", "grpc"])
async def test_metadata_sent_to_an_untrusting_service_is_not_read(transport: str) -> None:
    registry = MemoryRegistry()
    greeter = Service("greeter", registry=registry, trust_callers=False)
    async with (
        serve(greeter_app(greeter)),
        Service("caller", registry=registry, grpc=False) as caller,
    ):
        await greeter.wait_registered()
        reply = await caller.client.call(
            "greeter",
            "Greeter.Hello",
            {"name": "Ada"},
            metadata={"greeting": "PWNED"},
            transport=transport,  # type: ignore[arg-type]
        )
    # The deadline is the call's own (gRPC's grpc-timeout; over HTTP it was Micro-Timeout).
    assert reply["message"] == f"Hello Ada ({transport == 'grpc'})"
