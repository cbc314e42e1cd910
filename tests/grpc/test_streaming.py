"""Streaming handlers over HTTP: replies as NDJSON or Server-Sent Events, streams of requests
as a WebSocket; errors before and after the first reply; deadlines; FastAPI's own path."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

import httpx
import msgpack
import orjson
import pytest
from fastapi import Depends, FastAPI, Request
from starlette.requests import HTTPConnection
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from asgi_micro import MicroRouter, errors
from asgi_micro.codec import message_type
from asgi_micro.protobuf import message_converter
from asgi_micro.streaming import NDJSON, SSE, stream_format
from tests.helpers import serve

from .conftest import Count, Echo, Lab

ECHO = message_converter(message_type(Echo))


@pytest.fixture
async def http(lab: Lab) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://{lab.http}", trust_env=False) as client:
        yield client


def test_accept_chooses_ndjson_or_sse() -> None:
    assert stream_format("") is NDJSON
    assert stream_format("*/*") is NDJSON
    assert stream_format("application/jsonl") is NDJSON
    assert stream_format("text/event-stream") is SSE
    assert stream_format("application/x-ndjson;q=0.5, text/event-stream") is SSE
    assert stream_format("application/protobuf") is None


async def test_a_failure_after_the_first_reply_ends_the_stream_in_band(
    http: httpx.AsyncClient,
) -> None:
    response = await http.post("/lab/flaky", json={"text": "conflict"})
    assert response.status_code == 200
    first, last = (orjson.loads(line) for line in response.text.splitlines())
    assert first == {"text": "first", "seconds": 0.0}
    assert last == {
        "error": {"id": "lab", "code": 409, "detail": "changed meanwhile", "status": "Conflict"}
    }

    response = await http.post(
        "/lab/flaky", json={"text": "crash"}, headers={"accept": "text/event-stream"}
    )
    assert response.headers["cache-control"] == "no-cache"
    events = response.text.split("\n\n")
    assert events[0] == 'data: {"text":"first","seconds":0.0}'
    kind, data = events[1].split("\n")
    assert kind == "event: error"
    assert orjson.loads(data.removeprefix("data: ")) == {
        "id": "lab",
        "code": 500,
        "detail": "Internal Server Error",
        "status": "Internal Server Error",
    }


async def test_a_failure_before_the_first_reply_is_a_plain_error_response(
    http: httpx.AsyncClient,
) -> None:
    response = await http.post("/lab/flaky", json={"text": "early"})
    assert response.status_code == 403
    assert response.json()["detail"] == "not even one"

    response = await http.post("/lab/flaky", json={"text": 1})
    assert response.status_code == 400

    response = await http.post("/lab/flaky", json={}, headers={"accept": "application/protobuf"})
    assert response.status_code == 406


async def test_the_request_of_a_stream_may_be_protobuf(http: httpx.AsyncClient) -> None:
    async with http.stream(
        "POST",
        "/lab/ticks",
        content=ECHO.encode(Echo(text="go")),
        headers={"content-type": "application/protobuf"},
    ) as response:
        lines = response.aiter_lines()
        assert orjson.loads(await anext(lines)) == {"text": "0", "seconds": 0.0}
        await lines.aclose()


async def test_the_deadline_ends_a_stream_with_408(lab: Lab, http: httpx.AsyncClient) -> None:
    response = await http.post("/lab/ticks", json={}, headers={"micro-timeout": "200"})
    lines = response.text.splitlines()
    assert len(lines) > 2
    assert orjson.loads(lines[-1])["error"]["code"] == 408
    await asyncio.wait_for(lab.observed.stopped.wait(), 5)


async def test_a_websocket_carries_a_stream_of_requests(lab: Lab) -> None:
    async with connect(f"ws://{lab.http}/lab/count") as websocket:
        for text in ("a", "b", "c"):
            await websocket.send(orjson.dumps({"text": text}).decode())
        await websocket.send("")  # the end of the requests
        assert Count.model_validate_json(await websocket.recv()) == Count(count=3)
        with pytest.raises(ConnectionClosed) as closed:
            await websocket.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1000


@pytest.mark.parametrize(
    ("subprotocol", "encode", "decode"),
    [
        ("msgpack", msgpack.packb, msgpack.unpackb),
        ("protobuf", ECHO.encode, lambda data: ECHO.decode(data).model_dump()),
    ],
)
async def test_a_websocket_subprotocol_chooses_binary_frames(
    lab: Lab, subprotocol: str, encode: object, decode: object
) -> None:
    assert callable(encode)
    assert callable(decode)
    async with connect(f"ws://{lab.http}/lab/echoes", subprotocols=[subprotocol]) as websocket:
        assert websocket.subprotocol == subprotocol
        await websocket.send(
            encode({"text": "hi"} if subprotocol == "msgpack" else Echo(text="hi"))
        )
        reply = await websocket.recv()
        assert isinstance(reply, bytes)
        assert decode(reply) == {"text": "hi", "seconds": 0.0}


async def test_a_bad_frame_closes_the_websocket_with_4400(lab: Lab) -> None:
    async with connect(f"ws://{lab.http}/lab/echoes") as websocket:
        await websocket.send(orjson.dumps({"text": 5}).decode())
        with pytest.raises(ConnectionClosed) as closed:
            await websocket.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4400
    assert orjson.loads(closed.value.rcvd.reason) == {
        "id": "lab",
        "code": 400,
        "detail": "text: Input should be a valid string",
        "status": "Bad Request",
    }


async def test_handlers_that_need_fastapi_stream_through_fastapi() -> None:
    """A plain ``Depends`` and ``Request`` make FastAPI serve the stream (as JSON lines); a
    WebSocket's router dependencies run before the handler, and refuse when they raise."""
    checked: list[str] = []

    def check(connection: HTTPConnection) -> None:
        checked.append(connection.url.path)

    def guard() -> None:
        raise errors.Forbidden("members only")

    router = MicroRouter("Open")

    @router.rpc()
    async def numbers(req: Echo, request: Request) -> AsyncIterator[Echo]:
        for number in range(2):
            yield Echo(text=f"{request.url.path} {number}")

    @router.rpc(dependencies=[Depends(check)])
    async def echoes(requests: AsyncIterator[Echo]) -> AsyncIterator[Echo]:
        async for request in requests:
            yield request

    guarded = MicroRouter("Guarded")

    @guarded.rpc()
    async def echoes_too(requests: Annotated[AsyncIterator[Echo], "stream"]) -> AsyncIterator[Echo]:
        async for request in requests:
            yield request

    app = FastAPI()
    app.include_router(router)
    app.include_router(guarded, dependencies=[Depends(guard)])
    async with serve(app) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}", trust_env=False) as http:
            response = await http.post("/open/numbers", json={})
        assert response.headers["content-type"] == "application/jsonl"
        assert [orjson.loads(line)["text"] for line in response.text.splitlines()] == [
            "/open/numbers 0",
            "/open/numbers 1",
        ]
        async with connect(f"ws://{address}/open/echoes") as websocket:
            await websocket.send(orjson.dumps({"text": "hi"}).decode())
            assert orjson.loads(await websocket.recv())["text"] == "hi"
        assert checked == ["/open/echoes"]
        with pytest.raises(InvalidStatus):
            await connect(f"ws://{address}/guarded/echoes_too")
