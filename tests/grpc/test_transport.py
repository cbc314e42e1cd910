"""The client's gRPC transport: messages as models or dicts, checked against the server's own
descriptors (server reflection), every kind of method, and servers without reflection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from pydantic import BaseModel

from asgi_micro import errors
from asgi_micro.client.grpc import GrpcTransport

from .conftest import Count, Echo, Lab


class Reordered(BaseModel):
    """Echo's fields in another order: on the wire they would swap numbers."""

    seconds: float = 0.0
    text: str = ""


@pytest.fixture
async def transport() -> AsyncIterator[GrpcTransport]:
    async with GrpcTransport() as transport:
        yield transport


async def test_dicts_go_by_the_servers_descriptors(lab: Lab, transport: GrpcTransport) -> None:
    reply = await transport.unary(lab.grpc, "/lab.Lab/Slow", {"seconds": 0.01}, timeout=10)
    assert reply == {"text": "done", "seconds": 0.0}
    # As over HTTP: what the message has no field for is left out, a wrong value is the
    # service's 400, in pydantic's words.
    reply = await transport.unary(
        lab.grpc, "/lab.Lab/Slow", {"seconds": 0.01, "unknown": 1}, timeout=10
    )
    assert reply == {"text": "done", "seconds": 0.0}
    with pytest.raises(errors.BadRequest) as caught:
        await transport.unary(lab.grpc, "/lab.Lab/Slow", {"seconds": "soon"}, service="lab")
    assert caught.value.id == "lab"
    assert caught.value.detail.startswith("seconds: Input should be a valid number")


async def test_models_that_do_not_match_the_server_go_through_json(
    lab: Lab, transport: GrpcTransport
) -> None:
    # By field numbers Reordered(seconds=0.01) would be Echo(text=<a double>): the transport
    # sees that the shapes differ and converts by field name instead.
    reply = await transport.unary(
        lab.grpc, "/lab.Lab/Slow", Reordered(seconds=0.01), response_model=Reordered, timeout=10
    )
    assert reply == Reordered(text="done")
    echoed = [
        item
        async for item in transport.bidi_stream(
            lab.grpc,
            "/lab.Lab/Echoes",
            [Reordered(text="a", seconds=1.5), Reordered(text="b")],
            request_model=Reordered,
            response_model=Reordered,
            timeout=10,
        )
    ]
    assert echoed == [Reordered(text="a", seconds=0.0), Reordered(text="b", seconds=0.0)]


async def test_every_kind_of_method(lab: Lab, transport: GrpcTransport) -> None:
    count = await transport.client_stream(
        lab.grpc,
        "/lab.Lab/Count",
        [{"text": "a"}, {"text": "b"}],
        response_model=Count,
        timeout=10,
    )
    assert count == Count(count=2)

    async def requests() -> AsyncIterator[Echo]:
        for text in ("x", "y"):
            yield Echo(text=text)

    echoed = [
        reply
        async for reply in transport.bidi_stream(
            lab.grpc, "/lab.Lab/Echoes", requests(), request_model=Echo, timeout=10
        )
    ]
    assert echoed == [{"text": "x", "seconds": 0.0}, {"text": "y", "seconds": 0.0}]

    with pytest.raises(errors.Conflict):
        async for _ in transport.server_stream(lab.grpc, "/lab.Lab/Flaky", Echo(), timeout=10):
            pass


async def test_in_flight_counts_calls_per_node(lab: Lab, transport: GrpcTransport) -> None:
    assert transport.in_flight(lab.grpc) == 0
    call = asyncio.create_task(
        transport.unary(lab.grpc, "/lab.Lab/Slow", Echo(seconds=0.3), timeout=10)
    )
    await asyncio.wait_for(lab.observed.started.wait(), 10)
    assert transport.in_flight(lab.grpc) == 1
    await call
    assert transport.in_flight(lab.grpc) == 0


async def test_a_server_without_reflection_takes_models_but_not_dicts(
    transport: GrpcTransport,
) -> None:
    async def echo(data: bytes, context: object) -> bytes:
        return data

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "plain.Plain", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        address = f"127.0.0.1:{port}"
        reply = await transport.unary(
            address, "/plain.Plain/Echo", Echo(text="hi"), response_model=Echo, timeout=10
        )
        assert reply == Echo(text="hi")
        with pytest.raises(errors.BadRequest, match="no server reflection"):
            await transport.unary(address, "/plain.Plain/Echo", {"text": "hi"}, timeout=10)
    finally:
        await server.stop(None)
