"""What travels with a gRPC call: ``grpc-timeout`` becomes the handler's deadline, ``micro-*``
metadata and the trace context become the same ``Context`` that HTTP headers make."""

from __future__ import annotations

import asyncio
import time

import grpc
import httpx
import pytest

from asgi_micro import errors
from asgi_micro.client.grpc import GrpcTransport
from asgi_micro.codec import message_type
from asgi_micro.protobuf import message_converter

from .conftest import Echo, Lab, Seen

ECHO = message_converter(message_type(Echo))
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_grpc_timeout_is_the_handlers_deadline(lab: Lab) -> None:
    async with grpc.aio.insecure_channel(lab.grpc) as channel:
        slow = channel.unary_unary("/lab.Lab/Slow")
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await slow(ECHO.encode(Echo(seconds=5)), timeout=0.3)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 0.3 + 0.1
    [remaining] = lab.observed.remaining
    assert remaining is not None
    # grpc encodes grpc-timeout rounded up, and reads the remaining time across clocks (its
    # monotonic deadline against time.time()): it may come out a fraction of a millisecond over.
    assert 0.15 < remaining <= 0.3 + 0.005
    # The handler does not run on: it is cancelled at the deadline.
    await asyncio.wait_for(lab.observed.stopped.wait(), 0.5)
    assert lab.observed.finished == ["slow"]


async def test_the_transport_raises_timeout_at_the_deadline(lab: Lab) -> None:
    async with GrpcTransport() as transport:
        await transport.unary(lab.grpc, "/lab.Lab/Slow", Echo(), timeout=5)  # connected
        started = time.monotonic()
        with pytest.raises(errors.Timeout) as caught:
            await transport.unary(lab.grpc, "/lab.Lab/Slow", Echo(seconds=5), timeout=0.3)
    assert time.monotonic() - started < 0.3 + 0.1
    assert caught.value.code == 408


async def test_grpc_metadata_and_micro_headers_make_the_same_context(lab: Lab) -> None:
    metadata = {"user": "ada", "greeting": "hi"}
    trace = {"traceparent": TRACEPARENT, "tracestate": "vendor=1"}
    async with GrpcTransport() as transport:
        over_grpc: Seen = await transport.unary(
            lab.grpc,
            "/lab.Lab/Seen",
            Echo(),
            response_model=Seen,
            metadata=[
                *((f"micro-{key}", value) for key, value in metadata.items()),
                *trace.items(),
                ("x-not-micro", "ignored"),
            ],
            timeout=5,
        )
    async with httpx.AsyncClient(base_url=f"http://{lab.http}", trust_env=False) as http:
        response = await http.post(
            "/lab/seen",
            json={},
            headers={
                **{f"Micro-{key.title()}": value for key, value in metadata.items()},
                **trace,
                "Micro-Timeout": "5000",
            },
        )
    over_http = Seen.model_validate_json(response.content)

    for seen in (over_grpc, over_http):
        assert seen.metadata == metadata
        assert seen.trace == trace
        assert seen.current  # the context is current while the handler runs
        assert seen.remaining is not None
        assert 4 < seen.remaining <= 5 + 0.005  # gRPC's rounding, as above
        # An onward call sends the trace, the time left and the keys its allow-list names.
        assert seen.onward["micro-user"] == "ada"
        assert seen.onward["traceparent"] == TRACEPARENT
        assert 4000 < int(seen.onward["micro-timeout"]) <= 5000


async def test_a_call_without_metadata_or_deadline_has_an_empty_context(lab: Lab) -> None:
    async with GrpcTransport() as transport:
        seen: Seen = await transport.unary(lab.grpc, "/lab.Lab/Seen", Echo(), response_model=Seen)
    assert (seen.metadata, seen.trace, seen.remaining, seen.current) == ({}, {}, None, True)
    assert seen.onward == {}
