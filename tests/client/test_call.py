"""service.client.call against real servers, resolved through a registry."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from asgi_micro import MicroRouter, Service, current_context, errors
from asgi_micro.fastapi import Context, CurrentService
from asgi_micro.registry.memory import MemoryRegistry
from tests.helpers import serve


class Question(BaseModel):
    text: str
    delay: float = 0.0


class Answer(BaseModel):
    text: str
    metadata: dict[str, str] = {}
    remaining_ms: float | None = None


def answering_router(name: str) -> MicroRouter:
    router = MicroRouter(name)

    @router.rpc()
    async def ask(req: Question, ctx: Context) -> Answer:
        await asyncio.sleep(req.delay)
        remaining = ctx.remaining()
        return Answer(
            text=f"{name}: {req.text}",
            metadata=ctx.metadata,
            remaining_ms=None if remaining is None else remaining * 1000,
        )

    @router.rpc(path="/custom/path")
    async def custom(req: Question) -> Answer:
        return Answer(text=f"custom {req.text}")

    @router.rpc()
    async def refuse(req: Question) -> Answer:
        raise errors.Forbidden(f"not {req.text}")

    return router


@contextlib.asynccontextmanager
async def running(
    name: str, registry: MemoryRegistry, router: MicroRouter, *, propagate: tuple[str, ...] = ()
) -> AsyncIterator[Service]:
    service = Service(name, registry=registry, propagate=propagate)
    app = FastAPI(lifespan=service.lifespan)
    app.include_router(router)
    async with serve(app):
        await service.wait_registered()
        yield service


@pytest.fixture
async def oracle() -> AsyncIterator[tuple[Service, MemoryRegistry]]:
    registry = MemoryRegistry()
    async with (
        running("oracle", registry, answering_router("Oracle")),
        Service("caller", registry=registry) as caller,
    ):
        yield caller, registry


async def test_call_by_name(oracle: tuple[Service, MemoryRegistry]) -> None:
    caller, _ = oracle
    reply = await caller.client.call("oracle", "Oracle.Ask", {"text": "why"})
    assert reply["text"] == "Oracle: why"
    typed = await caller.client.call(
        "oracle", "Oracle.Ask", Question(text="how"), response_model=Answer
    )
    assert typed == Answer(
        text="Oracle: how", metadata={"from-service": "caller"}, remaining_ms=typed.remaining_ms
    )


async def test_msgpack_on_the_wire(oracle: tuple[Service, MemoryRegistry]) -> None:
    caller, _ = oracle
    reply = await caller.client.call(
        "oracle",
        "Oracle.Ask",
        {"text": "packed"},
        response_model=Answer,
        content_type="application/msgpack",
    )
    assert reply.text == "Oracle: packed"


async def test_custom_paths_come_from_the_registry(oracle: tuple[Service, MemoryRegistry]) -> None:
    caller, _ = oracle
    assert (await caller.client.call("oracle", "Oracle.Custom", {"text": "x"}))[
        "text"
    ] == "custom x"


async def test_address_skips_the_registry(oracle: tuple[Service, MemoryRegistry]) -> None:
    _caller, registry = oracle
    [record] = await registry.get_service("oracle")
    address = record.nodes[0].address
    alone = Service("alone", registry=MemoryRegistry())  # an empty registry
    async with alone:
        reply = await alone.client.call(
            "oracle", "Oracle.Custom", {"text": "direct"}, address=address
        )
    assert reply["text"] == "custom direct"


async def test_server_errors_are_raised_as_their_class(
    oracle: tuple[Service, MemoryRegistry],
) -> None:
    caller, _ = oracle
    with pytest.raises(errors.Forbidden) as info:
        await caller.client.call("oracle", "Oracle.Refuse", {"text": "that"})
    assert (info.value.detail, info.value.id) == ("not that", "oracle")
    with pytest.raises(errors.BadRequest, match="text: Field required"):
        await caller.client.call("oracle", "Oracle.Ask", {})
    with pytest.raises(errors.NotFound):
        await caller.client.call("oracle", "Oracle.Missing", {})


async def test_unknown_service_is_unavailable(oracle: tuple[Service, MemoryRegistry]) -> None:
    caller, _ = oracle
    with pytest.raises(errors.ServiceUnavailable, match="no nodes"):
        await caller.client.call("nobody", "Nobody.Home", {})


async def test_timeout_is_408_in_time(oracle: tuple[Service, MemoryRegistry]) -> None:
    caller, _ = oracle
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(errors.Timeout):
        await caller.client.call("oracle", "Oracle.Ask", {"text": "slow", "delay": 3}, timeout=0.2)
    assert loop.time() - started < 0.2 + 0.1


def relay_router() -> MicroRouter:
    relay = MicroRouter("Relay")

    @relay.rpc()
    async def forward(req: Question, service: CurrentService) -> Answer:
        assert current_context() is not None
        await asyncio.sleep(0.1)  # B spends some of the budget before calling on
        return await service.client.call("c", "Oracle.Ask", req, response_model=Answer)

    return relay


async def test_metadata_and_deadline_travel_down_a_chain() -> None:
    """A -> B -> C: metadata set by the first caller reaches C when B's allow-list names it,
    and C sees the reduced deadline."""
    registry = MemoryRegistry()
    async with (
        running("c", registry, answering_router("Oracle")),
        running("b", registry, relay_router(), propagate=("tenant",)),
        Service("a", registry=registry) as a,
    ):
        reply = await a.client.call(
            "b",
            "Relay.Forward",
            {"text": "hi"},
            response_model=Answer,
            timeout=2.0,
            metadata={"tenant": "acme", "secret": "for b only"},
        )
        assert reply.metadata == {"tenant": "acme", "from-service": "b"}
        assert reply.remaining_ms is not None
        assert 1500 < reply.remaining_ms < 1900  # 2 s minus B's 0.1 s and the hops

        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(errors.Timeout):
            await a.client.call("b", "Relay.Forward", {"text": "slow", "delay": 5}, timeout=0.5)
        assert loop.time() - started < 0.5 + 0.1


@pytest.mark.parametrize(
    ("propagate", "arrives"),
    [
        ((), {}),
        (("tenant",), {"tenant": "acme"}),
        (("*",), {"tenant": "acme", "secret": "s"}),
    ],
)
async def test_only_the_allow_list_crosses_a_hop_and_never_the_callers_identity(
    propagate: tuple[str, ...], arrives: dict[str, str]
) -> None:
    """What A sends B reaches C only under the keys B's allow-list names; and whatever A
    claims to be, C hears from B that B called (each hop names itself)."""
    registry = MemoryRegistry()
    async with (
        running("c", registry, answering_router("Oracle")),
        running("b", registry, relay_router(), propagate=propagate),
        Service("a", registry=registry) as a,
    ):
        reply = await a.client.call(
            "b",
            "Relay.Forward",
            {"text": "hi"},
            response_model=Answer,
            metadata={"tenant": "acme", "secret": "s", "from-service": "admin"},
        )
    assert reply.metadata == {**arrives, "from-service": "b"}


class Both(BaseModel):
    called: Answer
    posted: Answer


def direct_relay_router() -> MicroRouter:
    """``Relay.Direct`` calls C at an address of its own choosing, with ``call(address=)``
    and with ``http()``: not a node the registry named."""
    relay = MicroRouter("Relay")

    @relay.rpc()
    async def direct(req: Question, service: CurrentService) -> Both:
        [record] = await service.registry.get_service("c")
        address = record.nodes[0].address
        called = await service.client.call(
            "c", "Oracle.Ask", req, response_model=Answer, address=address
        )
        async with service.http() as http:
            posted = await http.post(f"http://{address}/oracle/ask", json=req.model_dump())
        return Both(called=called, posted=Answer.model_validate(posted.json()))

    return relay


async def test_an_address_the_caller_chose_gets_none_of_the_incoming_context() -> None:
    """B propagates everything to the nodes the registry names; to an address it was given it
    sends only what this call says (``call``: its own name, its deadline; ``http()``: as any
    HTTP client, nothing)."""
    registry = MemoryRegistry()
    async with (
        running("c", registry, answering_router("Oracle")),
        running("b", registry, direct_relay_router(), propagate=("*",)),
        Service("a", registry=registry) as a,
    ):
        reply = await a.client.call(
            "b",
            "Relay.Direct",
            {"text": "hi"},
            metadata={"tenant": "acme", "token": "t0k3n"},
            response_model=Both,
        )
    called, posted = reply.called, reply.posted
    assert called.metadata == {"from-service": "b"}
    assert called.remaining_ms is not None  # the call's own deadline
    assert posted.metadata == {}
    assert posted.remaining_ms is None


@pytest.mark.parametrize(
    ("content_type", "body"),
    [("application/msgpack", b"\x81\xa1"), ("application/json", b'{"text": ')],
)
async def test_a_reply_that_does_not_decode_is_a_bad_gateway(
    content_type: str, body: bytes
) -> None:
    """The caller's request was fine: a broken reply is the node's fault (502), not a 400."""
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    async def broken(request: object) -> Response:
        return Response(body, media_type=content_type)

    app = Starlette(routes=[Route("/oracle/ask", broken, methods=["POST"])])
    async with serve(app) as address, Service("caller", registry=MemoryRegistry()) as caller:
        with pytest.raises(errors.BadGateway, match="does not decode") as raised:
            await caller.client.call(
                "oracle", "Oracle.Ask", {"text": "x"}, address=address, content_type=content_type
            )
    assert raised.value.id == "asgi_micro.client"
