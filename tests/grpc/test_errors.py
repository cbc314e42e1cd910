"""Errors over gRPC: the hierarchy as status codes, and the server's error rebuilt exactly by the
client transport; connection failures as the HTTP client reports them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from asgi_micro import errors
from asgi_micro.client.grpc import GrpcTransport, method_path
from asgi_micro.grpc import error_from_status, status_for
from tests.helpers import free_port

from .conftest import Echo, Lab


@pytest.fixture
async def transport() -> AsyncIterator[GrpcTransport]:
    async with GrpcTransport(connect_timeout=2.0) as transport:
        yield transport


@pytest.mark.parametrize(
    ("text", "cls", "code", "id", "detail", "status"),
    [
        ("forbidden", errors.Forbidden, 403, "doorman", "no entry for you", "PERMISSION_DENIED"),
        ("teapot", errors.BadRequest, 418, "lab", "short and stout", "FAILED_PRECONDITION"),
        ("unavailable", errors.ServiceUnavailable, 503, "lab", "come back later", "UNAVAILABLE"),
        ("crash", errors.InternalServerError, 500, "lab", "Internal Server Error", "INTERNAL"),
    ],
)
async def test_the_servers_error_comes_back_as_the_same_class_id_and_detail(
    lab: Lab,
    transport: GrpcTransport,
    caplog: pytest.LogCaptureFixture,
    text: str,
    cls: type[errors.MicroError],
    code: int,
    id: str,
    detail: str,
    status: str,
) -> None:
    with pytest.raises(errors.MicroError) as caught:
        await transport.unary(lab.grpc, "/lab.Lab/Fail", Echo(text=text), timeout=10)
    assert type(caught.value) is cls
    assert (caught.value.code, caught.value.id, caught.value.detail) == (code, id, detail)

    # What any gRPC client sees: the status code and the detail, and no internals.
    payload = b"\n" + bytes([len(text)]) + text.encode()  # Echo(text=text)
    async with grpc.aio.insecure_channel(lab.grpc) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raw:
            await channel.unary_unary("/lab.Lab/Fail")(payload, timeout=10)
    assert raw.value.code().name == status
    assert raw.value.details() == detail
    if text == "crash":
        assert "secret internals" not in repr(caught.value)
        assert "secret internals" in caplog.text  # in the server's log, with the traceback


async def test_a_node_that_cannot_be_reached_is_connection_failed(
    transport: GrpcTransport,
) -> None:
    started = time.monotonic()
    with pytest.raises(errors.ConnectionFailed) as caught:
        await transport.unary(f"127.0.0.1:{free_port()}", "/lab.Lab/Fail", {"text": "x"})
    assert time.monotonic() - started < 2.0
    assert caught.value.id == "asgi_micro.client"


async def test_a_call_broken_after_it_was_sent_is_connection_lost(
    lab: Lab, transport: GrpcTransport
) -> None:
    assert await transport.unary(lab.grpc, "/lab.Lab/Slow", Echo(seconds=0), timeout=10)
    call = asyncio.create_task(
        transport.unary(lab.grpc, "/lab.Lab/Slow", Echo(seconds=30), timeout=10)
    )
    await asyncio.wait_for(lab.observed.started.wait(), 10)
    lab.observed.started.clear()
    server = lab.service.grpc_server
    assert server is not None
    await server.stop(0)  # the node dies with the call on it

    with pytest.raises(errors.ConnectionLost) as caught:
        await call
    assert caught.value.reused
    assert not caught.value.response_started
    await asyncio.wait_for(lab.observed.stopped.wait(), 10)  # the handler was cancelled


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, errors.BadRequest),
        (grpc.StatusCode.UNAUTHENTICATED, errors.Unauthorized),
        (grpc.StatusCode.NOT_FOUND, errors.NotFound),
        (grpc.StatusCode.ALREADY_EXISTS, errors.Conflict),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.TooManyRequests),
        (grpc.StatusCode.UNIMPLEMENTED, errors.NotImplemented),
        (grpc.StatusCode.UNKNOWN, errors.InternalServerError),
    ],
)
def test_a_status_without_the_servers_error_maps_to_the_closest_class(
    status: grpc.StatusCode, cls: type[errors.MicroError]
) -> None:
    error = error_from_status(status, "said the server", (), id="other")
    assert type(error) is cls
    assert (error.detail, error.id) == ("said the server", "other")


def test_every_class_of_the_hierarchy_has_a_status_code() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        if isinstance(cls, type) and issubclass(cls, errors.MicroError):
            assert status_for(cls()) != grpc.StatusCode.OK
    assert status_for(errors.Timeout()) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert status_for(errors.BadRequest()) == grpc.StatusCode.INVALID_ARGUMENT


def test_method_paths_follow_the_service_name() -> None:
    assert method_path("my-service", "Greeter.Hello") == "/my_service.Greeter/Hello"
    assert method_path("greeter", "Greeter.Hello", package="acme.v1") == "/acme.v1.Greeter/Hello"
    with pytest.raises(ValueError, match="Router"):
        method_path("greeter", "Hello")


async def test_unknown_methods_are_not_implemented(lab: Lab, transport: GrpcTransport) -> None:
    with pytest.raises(errors.NotImplemented, match="no method"):
        await transport.unary(lab.grpc, "/lab.Lab/Missing", {"text": "x"}, timeout=10)
    with pytest.raises(errors.NotImplemented, match="no service"):
        await transport.unary(lab.grpc, "/lab.Nowhere/Missing", {"text": "x"}, timeout=10)
