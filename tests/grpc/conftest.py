"""Fixtures for the gRPC tests: the example greeter, served in the test's event loop as plain
``uvicorn`` serves it (lifespan on, the address found once it listens), with its records in
memory; and channels to it."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import grpc
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from asgi_micro import MicroRouter, Service, current_context, errors
from asgi_micro.fastapi import Context as ContextDependency
from asgi_micro.registry.memory import MemoryRegistry
from tests.helpers import free_port, serve

ROOT = Path(__file__).resolve().parents[2]
GREETER = ROOT / "example_apps" / "greeter" / "app.py"


def load_greeter() -> ModuleType:
    """A fresh copy of the example greeter module: its own ``Service`` and app."""
    spec = importlib.util.spec_from_file_location(f"greeter_{uuid.uuid4().hex}", GREETER)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Greeter:
    module: ModuleType
    http: str  # host:port of uvicorn

    @property
    def service(self) -> Service:
        service: Service = self.module.service
        return service

    @property
    def grpc(self) -> str:
        assert self.service.grpc_server is not None
        return self.service.grpc_server.address


@pytest.fixture
async def greeter(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Greeter]:
    monkeypatch.setenv("MICRO_REGISTRY", "memory://")
    module = load_greeter()
    async with serve(module.app) as address:
        await module.service.wait_registered()
        yield Greeter(module, address)


@pytest.fixture
async def channel(greeter: Greeter) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(greeter.grpc) as channel:
        yield channel


# -- a service to probe errors, deadlines, metadata and cancellation --------------------------


class Echo(BaseModel):
    text: str = ""
    seconds: float = 0.0


class Seen(BaseModel):
    metadata: dict[str, str]
    trace: dict[str, str]
    remaining: float | None
    current: bool
    onward: dict[str, str]


class Count(BaseModel):
    count: int


@dataclass
class Observed:
    """What the handlers saw, for the tests to check server-side."""

    started: asyncio.Event = field(default_factory=asyncio.Event)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    remaining: list[float | None] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)


def lab_router(observed: Observed) -> MicroRouter:
    lab = MicroRouter("Lab")

    @lab.rpc()
    async def fail(req: Echo) -> Echo:
        if req.text == "forbidden":
            raise errors.Forbidden("no entry for you", id="doorman")
        if req.text == "teapot":
            error = errors.MicroError("short and stout")
            error.code = 418
            raise error
        if req.text == "unavailable":
            raise errors.ServiceUnavailable("come back later")
        raise RuntimeError("secret internals")

    @lab.rpc()
    async def slow(req: Echo, ctx: ContextDependency) -> Echo:
        observed.remaining.append(ctx.remaining())
        observed.started.set()
        try:
            await asyncio.sleep(req.seconds)
        finally:
            observed.finished.append("slow")
            observed.stopped.set()
        return Echo(text="done")

    @lab.rpc()
    async def seen(req: Echo, ctx: ContextDependency) -> Seen:
        return Seen(
            metadata=ctx.metadata,
            trace=ctx.trace,
            remaining=ctx.remaining(),
            current=current_context() is ctx,
            onward=dict(ctx.onward(propagate=("user",)).headers()),
        )

    @lab.rpc()
    async def ticks(req: Echo) -> AsyncIterator[Echo]:
        observed.started.set()
        try:
            for number in range(100_000):
                yield Echo(text=str(number))
                await asyncio.sleep(0.01)
        finally:
            observed.finished.append("ticks")
            observed.stopped.set()

    @lab.rpc()
    async def echoes(requests: AsyncIterator[Echo]) -> AsyncIterator[Echo]:
        observed.started.set()
        try:
            async for request in requests:
                yield Echo(text=request.text)
        finally:
            observed.finished.append("echoes")
            observed.stopped.set()

    @lab.rpc()
    async def flaky(req: Echo) -> AsyncIterator[Echo]:
        if req.text == "early":
            raise errors.Forbidden("not even one")
        yield Echo(text="first")
        if req.text == "crash":
            raise RuntimeError("secret internals")
        raise errors.Conflict("changed meanwhile")

    @lab.rpc()
    async def count(requests: AsyncIterator[Echo]) -> Count:
        return Count(count=len([request async for request in requests]))

    return lab


@dataclass
class Lab:
    service: Service
    http: str
    observed: Observed

    @property
    def grpc(self) -> str:
        assert self.service.grpc_server is not None
        return self.service.grpc_server.address


@contextlib.asynccontextmanager
async def serving(app: FastAPI, service: Service) -> AsyncIterator[str]:
    """Serve ``app`` on uvicorn in this loop; the service knows its address up front."""
    port = free_port()
    service.address = f"127.0.0.1:{port}"
    async with serve(app, port=port) as address:
        await service.wait_registered()
        yield address


@pytest.fixture
async def lab() -> AsyncIterator[Lab]:
    observed = Observed()
    service = Service("lab", registry=MemoryRegistry(), drain_grace=0.0, drain_timeout=5.0)
    app = FastAPI(lifespan=service.lifespan)
    app.include_router(lab_router(observed))
    async with serving(app, service) as address:
        yield Lab(service, address, observed)
