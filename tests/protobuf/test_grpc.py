"""Converters on a real grpc.aio server (loopback), called by a client that grpcio-tools
generated in the test from the rendered ``.proto``."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from pydantic import BaseModel, Field, ValidationError

from asgi_micro.errors import BadRequest
from asgi_micro.protobuf import MessageConverter, ProtoMethod, ProtoSchema, render_proto

from .conftest import Compile


class HelloRequest(BaseModel):
    name: str = Field(max_length=20)
    times: int = 1


class HelloResponse(BaseModel):
    message: str
    at: dt.datetime


def build_schema(package: str) -> ProtoSchema:
    schema = ProtoSchema(package=package)
    schema.add_service(
        "Greeter",
        [
            ProtoMethod("Hello", HelloRequest, HelloResponse),
            ProtoMethod("Repeat", HelloRequest, HelloResponse, server_streaming=True),
            ProtoMethod("Join", HelloRequest, HelloResponse, client_streaming=True),
        ],
    )
    return schema


AT = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


async def hello(request: HelloRequest) -> HelloResponse:
    return HelloResponse(message=f"Hello {request.name}", at=AT)


async def repeat(request: HelloRequest) -> AsyncIterator[HelloResponse]:
    for index in range(request.times):
        yield HelloResponse(message=f"{index}: {request.name}", at=AT)


async def join(requests: AsyncIterator[HelloRequest]) -> HelloResponse:
    names = [request.name async for request in requests]
    return HelloResponse(message=", ".join(names), at=AT)


async def decoded(
    converter: MessageConverter, data: bytes, context: grpc.aio.ServicerContext[Any, Any]
) -> Any:
    """Decode inside the handler: grpc reports a request_deserializer's exception as UNKNOWN,
    while bad input is INVALID_ARGUMENT."""
    try:
        return converter.decode(data)
    except (BadRequest, ValidationError) as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))


def generic_handler(schema: ProtoSchema) -> grpc.GenericRpcHandler:
    request = schema.converter(HelloRequest)
    response = schema.converter(HelloResponse)

    async def unary(data: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> HelloResponse:
        return await hello(await decoded(request, data, context))

    async def server_stream(
        data: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[HelloResponse]:
        async for item in repeat(await decoded(request, data, context)):
            yield item

    async def client_stream(
        stream: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> HelloResponse:
        async def requests() -> AsyncIterator[HelloRequest]:
            async for data in stream:
                yield await decoded(request, data, context)

        return await join(requests())

    return grpc.method_handlers_generic_handler(
        f"{schema.package}.Greeter",
        {
            "Hello": grpc.unary_unary_rpc_method_handler(
                unary, response_serializer=response.encode
            ),
            "Repeat": grpc.unary_stream_rpc_method_handler(
                server_stream, response_serializer=response.encode
            ),
            "Join": grpc.stream_unary_rpc_method_handler(
                client_stream, response_serializer=response.encode
            ),
        },
    )


@pytest.fixture
async def served(
    package: str, compile_proto: Compile
) -> AsyncIterator[tuple[grpc.aio.Channel, ModuleType, ModuleType]]:
    schema = build_schema(package)
    text = render_proto(schema)
    messages = compile_proto({schema.file_name: text}, f"{package}_pb2")
    services = compile_proto({schema.file_name: text}, f"{package}_pb2_grpc")
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((generic_handler(schema),))
    reflection.enable_server_reflection(
        [*schema.service_names, reflection.SERVICE_NAME], server, pool=schema.pool
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel, messages, services
    finally:
        await server.stop(None)


async def test_a_generated_client_calls_every_kind_of_method(
    served: tuple[grpc.aio.Channel, ModuleType, ModuleType],
) -> None:
    channel, messages, services = served
    stub = services.GreeterStub(channel)

    reply = await stub.Hello(messages.HelloRequest(name="Ada"), timeout=10)
    assert reply.message == "Hello Ada"
    assert reply.at.ToDatetime(tzinfo=dt.UTC) == AT

    stream = stub.Repeat(messages.HelloRequest(name="Bob", times=3), timeout=10)
    assert [item.message async for item in stream] == ["0: Bob", "1: Bob", "2: Bob"]

    async def names() -> AsyncIterator[Any]:
        for name in ("a", "b", "c"):
            yield messages.HelloRequest(name=name)

    joined = await stub.Join(names(), timeout=10)
    assert joined.message == "a, b, c"


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        pytest.param(b"\xff\xff\xff", "not a valid", id="not a message"),
        pytest.param(
            b"\x08\x01", r"HelloRequest.name \(field 1\) was sent as varint", id="wrong wire type"
        ),
        pytest.param(b"\x0a\x15" + b"x" * 21, "at most 20 characters", id="constraint"),
    ],
)
async def test_bad_input_is_invalid_argument(
    served: tuple[grpc.aio.Channel, ModuleType, ModuleType], body: bytes, detail: str
) -> None:
    channel, messages, _ = served
    call = channel.unary_unary(f"/{messages.DESCRIPTOR.package}.Greeter/Hello")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(body, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(detail, caught.value.details() or "")


async def test_server_reflection_serves_the_schema_descriptors(
    served: tuple[grpc.aio.Channel, ModuleType, ModuleType],
) -> None:
    channel, messages, _ = served
    package = messages.DESCRIPTOR.package
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=f"{package}.Greeter"),
    ]
    listed, found = [reply async for reply in stub.ServerReflectionInfo(iter(requests), timeout=10)]
    assert f"{package}.Greeter" in [s.name for s in listed.list_services_response.service]
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(data)
        for data in found.file_descriptor_response.file_descriptor_proto
    ]
    served_file = next(file for file in files if file.package == package)
    assert [method.name for method in served_file.service[0].method] == ["Hello", "Repeat", "Join"]
    assert "google/protobuf/timestamp.proto" in [file.name for file in files]
