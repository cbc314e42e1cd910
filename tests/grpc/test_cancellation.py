"""A client that goes away stops the handler: gRPC streams, NDJSON, SSE and WebSocket. The
handlers record in ``finally`` that they stopped, as a handler releasing resources would."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from asgi_micro.client.grpc import GrpcTransport
from asgi_micro.codec import message_type
from asgi_micro.protobuf import message_converter

from .conftest import Echo, Lab

ECHO = message_converter(message_type(Echo))


async def stopped(lab: Lab, handler: str) -> None:
    await asyncio.wait_for(lab.observed.stopped.wait(), 5)
    assert lab.observed.finished == [handler]


async def test_cancelling_a_grpc_server_stream_stops_the_handler(lab: Lab) -> None:
    async with grpc.aio.insecure_channel(lab.grpc) as channel:
        call = channel.unary_stream("/lab.Lab/Ticks")(ECHO.encode(Echo()), timeout=30)
        assert ECHO.decode(await call.read()) == Echo(text="0")
        assert ECHO.decode(await call.read()) == Echo(text="1")
        call.cancel()
        await stopped(lab, "ticks")


async def test_cancelling_a_grpc_bidi_stream_stops_the_handler(lab: Lab) -> None:
    async with grpc.aio.insecure_channel(lab.grpc) as channel:
        call = channel.stream_stream("/lab.Lab/Echoes")(timeout=30)
        await call.write(ECHO.encode(Echo(text="hi")))
        assert ECHO.decode(await call.read()) == Echo(text="hi")
        call.cancel()
        await stopped(lab, "echoes")


async def test_leaving_a_transport_stream_stops_the_handler(lab: Lab) -> None:
    async with GrpcTransport() as transport:
        replies = transport.server_stream(
            lab.grpc, "/lab.Lab/Ticks", Echo(), response_model=Echo, timeout=30
        )
        async with contextlib.aclosing(replies):
            async for reply in replies:
                if reply.text == "2":
                    break
        await stopped(lab, "ticks")


@pytest.mark.parametrize("accept", ["application/x-ndjson", "text/event-stream"])
async def test_closing_an_http_stream_stops_the_handler(lab: Lab, accept: str) -> None:
    async with (
        httpx.AsyncClient(base_url=f"http://{lab.http}", trust_env=False) as http,
        http.stream("POST", "/lab/ticks", json={}, headers={"accept": accept}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"] == accept
        lines = response.aiter_lines()
        first = await anext(lines)
        assert orjson.loads(first.removeprefix("data: ")) == {"text": "0", "seconds": 0.0}
        await lines.aclose()
    await stopped(lab, "ticks")


async def test_closing_a_websocket_stops_the_handler(lab: Lab) -> None:
    async with connect(f"ws://{lab.http}/lab/echoes") as websocket:
        await websocket.send(orjson.dumps({"text": "hi"}).decode())
        assert orjson.loads(await websocket.recv()) == {"text": "hi", "seconds": 0.0}
        await asyncio.wait_for(lab.observed.started.wait(), 5)
    await stopped(lab, "echoes")
