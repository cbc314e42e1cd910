"""Bad input over gRPC gets INVALID_ARGUMENT or RESOURCE_EXHAUSTED, and the server serves on."""

from __future__ import annotations

import grpc
import orjson
import pytest

from asgi_micro.grpc import DEFAULT_MAX_MESSAGE_SIZE, ERROR_KEY

HELLO = "/greeter.Greeter/Hello"
ADA = b"\n\x03Ada"  # HelloRequest(name="Ada")


@pytest.mark.parametrize(
    ("body", "code", "detail"),
    [
        pytest.param(
            b"\xff\xff\xff",
            grpc.StatusCode.INVALID_ARGUMENT,
            "not a valid greeter.HelloRequest message",
            id="not a message",
        ),
        pytest.param(
            b"\x08\x01",  # field 1 as a varint; name is a string
            grpc.StatusCode.INVALID_ARGUMENT,
            "HelloRequest.name (field 1) was sent as varint",
            id="wrong wire type",
        ),
        pytest.param(
            b"\n\x00",  # name="", which min_length=1 refuses
            grpc.StatusCode.INVALID_ARGUMENT,
            "name: String should have at least 1 character",
            id="invalid value",
        ),
        pytest.param(
            b"\n" + bytes([0x80, 0x80, 0x80, 0x03]) + b"x" * (6 * 1024 * 1024),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "larger than max",
            id="oversized",
        ),
    ],
)
async def test_bad_input_is_refused_and_the_server_serves_on(
    channel: grpc.aio.Channel, body: bytes, code: grpc.StatusCode, detail: str
) -> None:
    assert len(body) < DEFAULT_MAX_MESSAGE_SIZE or code == grpc.StatusCode.RESOURCE_EXHAUSTED
    hello = channel.unary_unary(HELLO)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await hello(body, timeout=10)
    assert caught.value.code() == code
    assert detail in (caught.value.details() or "")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        [error] = [value for key, value in caught.value.trailing_metadata() if key == ERROR_KEY]
        assert orjson.loads(error) == {
            "id": "greeter",
            "code": 400,
            "detail": caught.value.details(),
            "status": "Bad Request",
        }

    assert await hello(ADA, timeout=10) == b"\n\tHello Ada"


async def test_bad_requests_in_a_stream_end_it_with_invalid_argument(
    channel: grpc.aio.Channel,
) -> None:
    chat = channel.stream_stream("/greeter.Greeter/Chat")
    call = chat(iter([ADA, b"\xff\xff"]), timeout=10)
    assert await call.read() == b"\n\tHello Ada"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await channel.unary_unary(HELLO)(ADA, timeout=10) == b"\n\tHello Ada"
