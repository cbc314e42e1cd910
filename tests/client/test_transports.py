"""service.client over gRPC and streaming, against the example greeter in this process."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI

from asgi_micro import Service, errors
from asgi_micro.client.selector import RoundRobin
from asgi_micro.registry import Node
from asgi_micro.registry import Service as ServiceRecord
from asgi_micro.registry.memory import MemoryRegistry
from example_apps.greeter.app import GreetingsRequest, greeter
from example_apps.greeter.messages import HelloRequest, HelloResponse
from tests.helpers import free_port, serve


@pytest.fixture
async def greeter_node() -> AsyncIterator[tuple[Service, Service]]:
    registry = MemoryRegistry()
    node = Service("greeter", version="1.0.0", registry=registry)
    app = FastAPI(lifespan=node.lifespan)
    app.include_router(greeter)
    async with serve(app), Service("caller", registry=registry) as caller:
        await node.wait_registered()
        yield node, caller


@pytest.mark.parametrize("transport", ["http", "grpc"])
async def test_call_over_either_transport(
    greeter_node: tuple[Service, Service], transport: str
) -> None:
    _, caller = greeter_node
    reply = await caller.client.call(
        "greeter",
        "Greeter.Hello",
        HelloRequest(name="Ada"),
        response_model=HelloResponse,
        metadata={"greeting": "Hi"},
        transport=transport,  # type: ignore[arg-type]
    )
    assert reply == HelloResponse(message="Hi Ada")
    untyped = await caller.client.call(
        "greeter", "Greeter.Hello", {"name": "Bo"}, transport=transport
    )  # type: ignore[arg-type]
    assert untyped == {"message": "Hello Bo"}
    with pytest.raises(errors.BadRequest) as info:
        await caller.client.call("greeter", "Greeter.Hello", {"name": ""}, transport=transport)  # type: ignore[arg-type]
    assert "name" in info.value.detail
    assert info.value.id == "greeter"


@pytest.mark.parametrize("transport", ["http", "grpc"])
async def test_server_stream(greeter_node: tuple[Service, Service], transport: str) -> None:
    _, caller = greeter_node
    replies = [
        reply
        async for reply in caller.client.stream(
            "greeter",
            "Greeter.Greetings",
            GreetingsRequest(name="Ada", count=3),
            response_model=HelloResponse,
            transport=transport,  # type: ignore[arg-type]
        )
    ]
    assert [reply.message for reply in replies] == [f"Hello Ada ({n})" for n in (1, 2, 3)]


@pytest.mark.parametrize("transport", ["http", "grpc"])
async def test_stopping_a_stream_early(
    greeter_node: tuple[Service, Service], transport: str
) -> None:
    _, caller = greeter_node
    stream = caller.client.stream(
        "greeter",
        "Greeter.Greetings",
        {"name": "Ada", "count": 100},
        transport=transport,  # type: ignore[arg-type]
    )
    async with contextlib.aclosing(stream):
        first = await anext(stream)
    assert first == {"message": "Hello Ada (1)"}
    # The connection or channel is fine afterwards.
    assert (
        await caller.client.call("greeter", "Greeter.Hello", {"name": "Cy"}, transport=transport)
    )[  # type: ignore[arg-type]
        "message"
    ] == "Hello Cy"


@pytest.mark.parametrize("transport", ["http", "grpc"])
async def test_stream_errors_are_raised(
    greeter_node: tuple[Service, Service], transport: str
) -> None:
    _, caller = greeter_node
    with pytest.raises(errors.BadRequest, match="count"):
        async for _ in caller.client.stream(
            "greeter",
            "Greeter.Greetings",
            {"name": "Ada", "count": 0},
            transport=transport,  # type: ignore[arg-type]
        ):
            pass


async def test_bidi_stream_over_grpc(greeter_node: tuple[Service, Service]) -> None:
    _, caller = greeter_node

    async def people() -> AsyncIterator[HelloRequest]:
        for name in ("Ada", "Bo"):
            yield HelloRequest(name=name)

    replies = [
        reply.message
        async for reply in caller.client.stream(
            "greeter",
            "Greeter.Chat",
            people(),
            request_model=HelloRequest,
            response_model=HelloResponse,
            transport="grpc",
        )
    ]
    assert replies == ["Hello Ada", "Hello Bo"]
    with pytest.raises(ValueError, match="transport='grpc'"):
        async for _ in caller.client.stream("greeter", "Greeter.Chat", people()):
            pass
    with pytest.raises(ValueError, match="does not stream"):
        async for _ in caller.client.stream("greeter", "Greeter.Hello", {"name": "Ada"}):
            pass


async def test_grpc_by_address(greeter_node: tuple[Service, Service]) -> None:
    node, caller = greeter_node
    assert node.node is not None
    grpc_address = node.node.metadata["grpc"]
    reply = await caller.client.call(
        "greeter", "Greeter.Hello", {"name": "Ada"}, address=grpc_address, transport="grpc"
    )
    assert reply == {"message": "Hello Ada"}
    replies = [
        r
        async for r in caller.client.stream(
            "greeter",
            "Greeter.Greetings",
            {"name": "Ada", "count": 2},
            address=grpc_address,
            transport="grpc",
        )
    ]
    assert len(replies) == 2


async def test_grpc_fails_over_from_a_dead_node(greeter_node: tuple[Service, Service]) -> None:
    _, caller = greeter_node
    [record] = await caller.registry.get_service("greeter")
    dead_port = free_port()
    dead = Node(
        id="dead", address=f"127.0.0.1:{free_port()}", metadata={"grpc": f"127.0.0.1:{dead_port}"}
    )
    await caller.registry.register(
        ServiceRecord(name="greeter", version="1.0.0", endpoints=record.endpoints, nodes=[dead])
    )
    caller.client.strategy = RoundRobin()
    for _ in range(6):  # non-idempotent or not, nothing was sent to the dead node
        reply = await caller.client.call(
            "greeter", "Greeter.Hello", {"name": "Ada"}, transport="grpc"
        )
        assert reply == {"message": "Hello Ada"}
    assert caller.client.outliers.ejected(dead)


async def test_grpc_calls_skip_nodes_without_grpc(greeter_node: tuple[Service, Service]) -> None:
    _, caller = greeter_node
    [record] = await caller.registry.get_service("greeter")
    http_only = Node(id="http-only", address=f"127.0.0.1:{free_port()}")
    await caller.registry.register(
        ServiceRecord(
            name="greeter", version="1.0.0", endpoints=record.endpoints, nodes=[http_only]
        )
    )
    caller.client.strategy = RoundRobin()
    for _ in range(4):
        reply = await caller.client.call(
            "greeter", "Greeter.Hello", {"name": "Ada"}, transport="grpc"
        )
        assert reply == {"message": "Hello Ada"}
    assert not caller.client.outliers.ejected(http_only)  # never tried
    with pytest.raises(errors.ServiceUnavailable, match="serving gRPC"):
        await caller.client.call("other", "Other.Call", {}, transport="grpc")
