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
