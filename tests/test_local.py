"""Calls to a node served in the same process skip sockets and codecs, and behave as calls over
the wire do: the same replies, errors, validation, metadata, deadlines, wrappers and accounting
(``asgi_micro.local``). Each behaviour is checked both ways, in process and over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi import FastAPI, Request
from pydantic import BaseModel, Field

from asgi_micro import MicroRouter, Service, errors, local
from asgi_micro.client import Client, ClientCall, ClientNext
from asgi_micro.context import Context as CallContext
from asgi_micro.fastapi import Context
from asgi_micro.pipeline import Call, Next
from asgi_micro.testing import until
from tests.helpers import serve


class Ask(BaseModel):
    name: str = Field(min_length=1)
    tags: list[str] = []


class Answer(BaseModel):
    message: str
    at: datetime
    tags: list[str]


def greeter_app(service: Service, seen: list[str]) -> FastAPI:
    api = MicroRouter("Greeter")

    @api.rpc()
    async def hello(req: Ask, ctx: Context) -> Answer:
        req.tags.append("touched")  # the caller's request must not change
        greeting = ctx.metadata.get("greeting", "Hello")
        return Answer(
            message=f"{greeting} {req.name}", at=datetime(2026, 1, 2, tzinfo=UTC), tags=req.tags
        )

    @api.rpc()
    async def missing(req: Ask) -> Answer:
        raise errors.NotFound(f"no {req.name}")

    @api.rpc()
    async def broken(req: Ask) -> Answer:
        raise RuntimeError("internal detail")

    @api.rpc()
    async def slow(req: Ask) -> Answer:
        await asyncio.sleep(5)
        return Answer(message="late", at=datetime(2026, 1, 2, tzinfo=UTC), tags=[])

    @api.rpc()
    async def later(req: Ask) -> Answer:
        await asyncio.sleep(0.01)  # a handler that waits, then fails
        raise errors.Conflict(f"{req.name} is taken")

    @api.rpc()
    async def sloppy(req: Ask) -> Answer:
        return {"message": req.name, "at": "2026-01-02T00:00:00Z", "tags": []}  # type: ignore[return-value]

    @api.rpc()
    async def with_request(req: Ask, request: Request) -> Answer:
        return Answer(message=request.url.path, at=datetime(2026, 1, 2, tzinfo=UTC), tags=[])

    async def record(call: Call, next: Next) -> Any:
        seen.append(f"{call.endpoint} {call.protocol}")
        if call.metadata.get("refuse"):
            raise errors.Forbidden("refused by a wrapper")
        return await next(call)

    service.wrap(record)
    app = FastAPI(lifespan=service.lifespan)
    app.include_router(api)
    return app


@pytest.fixture
async def greeter() -> AsyncIterator[tuple[Service, list[str], str]]:
    registry = f"memory://local-{uuid.uuid4()}"
    service = Service("greeter", registry=registry)
    seen: list[str] = []
    async with serve(greeter_app(service, seen)):
        await service.wait_registered()
        yield service, seen, registry


@pytest.fixture(params=["local", "http"])
async def caller(
    request: pytest.FixtureRequest, greeter: tuple[Service, list[str], str]
) -> AsyncIterator[tuple[Client, str]]:
    """A client in the same process, calling in process or, with ``local=False``, over HTTP."""
    _, _, registry = greeter
    frontend = Service("frontend", registry=registry)
    await frontend.start()
    client = Client(registry=frontend.registry, caller="frontend", local=request.param == "local")
    try:
        yield client, request.param
    finally:
        await client.aclose()
        await frontend.stop()


def protocol_of(way: str) -> str:
    return "local" if way == "local" else "http"


async def test_a_call_goes_in_process_or_over_the_wire_with_the_same_reply(
    greeter: tuple[Service, list[str], str], caller: tuple[Client, str]
) -> None:
    _, seen, _ = greeter
    client, way = caller
    ask = Ask(name="Ada", tags=["a"])
    reply = await client.call("greeter", "Greeter.Hello", ask)
    assert reply == {"message": "Hello Ada", "at": "2026-01-02T00:00:00Z", "tags": ["a", "touched"]}
    assert ask.tags == ["a"]  # the callee had a copy
    typed = await client.call("greeter", "Greeter.Hello", {"name": "Bo"}, response_model=Answer)
    assert typed == Answer(
        message="Hello Bo", at=datetime(2026, 1, 2, tzinfo=UTC), tags=["touched"]
    )
    sloppy = await client.call("greeter", "Greeter.Sloppy", {"name": "Cy"}, response_model=Answer)
    assert sloppy.at == datetime(2026, 1, 2, tzinfo=UTC)
    assert seen == [f"Greeter.{name} {protocol_of(way)}" for name in ("Hello", "Hello", "Sloppy")]


async def test_errors_read_the_same(
    greeter: tuple[Service, list[str], str], caller: tuple[Client, str]
) -> None:
    client, _ = caller
    with pytest.raises(errors.NotFound) as not_found:
        await client.call("greeter", "Greeter.Missing", {"name": "x"})
    assert (not_found.value.id, not_found.value.detail) == ("greeter", "no x")
    with pytest.raises(errors.InternalServerError) as broken:
        await client.call("greeter", "Greeter.Broken", {"name": "x"}, retries=0)
    assert broken.value.id == "greeter"
    assert "internal detail" not in broken.value.detail
    with pytest.raises(errors.BadRequest) as bad:
        await client.call("greeter", "Greeter.Hello", {"name": ""})
    assert bad.value.id == "greeter"
    assert "name" in bad.value.detail
    with pytest.raises(errors.Forbidden) as refused:
        await client.call("greeter", "Greeter.Hello", {"name": "x"}, metadata={"refuse": "yes"})
    assert refused.value.detail == "refused by a wrapper"


async def test_the_deadline_and_metadata_reach_the_callee(
    greeter: tuple[Service, list[str], str], caller: tuple[Client, str]
) -> None:
    service, _, _ = greeter
    client, _ = caller
    reply = await client.call(
        "greeter", "Greeter.Hello", {"name": "Ada"}, metadata={"greeting": "Hi"}
    )
    assert reply["message"] == "Hi Ada"
    started = asyncio.get_running_loop().time()
    with pytest.raises(errors.Timeout):
        await client.call("greeter", "Greeter.Slow", {"name": "x"}, timeout=0.3, retries=0)
    assert asyncio.get_running_loop().time() - started < 2
    await until(lambda: service.stats.in_flight == 0, "the callee to end the slow call", 2)


async def test_a_callee_that_trusts_no_caller_takes_no_metadata() -> None:
    registry = f"memory://local-{uuid.uuid4()}"
    service = Service("greeter", registry=registry, trust_callers=False)
    async with serve(greeter_app(service, [])):
        await service.wait_registered()
        async with contextlib.aclosing(Client(registry=service.registry, local=True)) as client:
            reply = await client.call(
                "greeter", "Greeter.Hello", {"name": "Ada"}, metadata={"greeting": "Hi"}
            )
    assert reply["message"] == "Hello Ada"


async def test_in_process_calls_are_counted_and_seen_by_client_wrappers(
    greeter: tuple[Service, list[str], str],
) -> None:
    service, seen, _ = greeter
    outgoing: list[str] = []
    client = Client(registry=service.registry, local=True)

    @client.wrap
    async def record(call: ClientCall, next: ClientNext) -> Any:
        outgoing.append(call.endpoint)
        return await next(call)

    before = service.stats.requests
    try:
        for _ in range(3):
            await client.call("greeter", "Greeter.Hello", {"name": "Ada"})
        with pytest.raises(errors.NotFound):
            await client.call("greeter", "Greeter.Missing", {"name": "x"})
    finally:
        await client.aclose()
    assert service.stats.requests - before == 4
    assert outgoing == ["Greeter.Hello"] * 3 + ["Greeter.Missing"]
    assert seen == ["Greeter.Hello local"] * 3 + ["Greeter.Missing local"]


async def test_what_needs_fastapi_still_goes_over_the_wire(
    greeter: tuple[Service, list[str], str],
) -> None:
    service, seen, _ = greeter
    async with contextlib.aclosing(Client(registry=service.registry, local=True)) as client:
        reply = await client.call("greeter", "Greeter.WithRequest", {"name": "Ada"})
    assert reply["message"] == "/greeter/with_request"
    assert seen == ["Greeter.WithRequest http"]


async def test_a_stopped_service_takes_no_more_calls_in_process() -> None:
    registry = f"memory://local-{uuid.uuid4()}"
    service = Service("greeter", registry=registry)
    async with serve(greeter_app(service, [])):
        await service.wait_registered()
        assert local.node(service.id) is not None
    assert local.node(service.id) is None


async def test_a_handler_that_waits_then_fails_fails_the_same(
    greeter: tuple[Service, list[str], str], caller: tuple[Client, str]
) -> None:
    client, _ = caller
    with pytest.raises(errors.Conflict) as taken:
        await client.call("greeter", "Greeter.Later", {"name": "Ada"})
    assert (taken.value.id, taken.value.detail) == ("greeter", "Ada is taken")


async def test_a_caller_cancelled_cancels_the_handler_in_process(
    greeter: tuple[Service, list[str], str],
) -> None:
    """(Over HTTP uvicorn lets a handler run on when its caller goes.)"""
    service, _, _ = greeter
    client = Client(registry=service.registry, local=True)
    slow = asyncio.create_task(
        client.call("greeter", "Greeter.Slow", {"name": "x"}, timeout=10, retries=0)
    )
    await until(lambda: service.stats.in_flight, "the slow call to start", 2)
    assert service.stats.in_flight == 1
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    await client.aclose()
    await until(lambda: service.stats.in_flight == 0, "the cancelled handler to end", 2)


async def test_an_attempt_that_runs_out_of_its_own_time_is_the_clients_timeout(
    greeter: tuple[Service, list[str], str],
) -> None:
    service, _, _ = greeter
    here = local.node(service.id)
    assert here is not None
    rpc = here.rpc("Greeter.Slow")
    assert rpc is not None
    context = CallContext()  # the call has no deadline; the attempt has 0.1 s
    with pytest.raises(errors.Timeout) as timed_out:
        await here.call(rpc, {"name": "x"}, context, None, attempt=0.1)
    assert timed_out.value.id == errors.CLIENT_ID
    context.deadline = asyncio.get_running_loop().time() + 0.1  # now the call's deadline binds
    with pytest.raises(errors.Timeout) as expired:
        await here.call(rpc, {"name": "x"}, context, None, attempt=5)
    assert expired.value.id == "greeter"
