"""One handler, three protocols: HTTP with JSON, HTTP with protobuf and gRPC answer alike."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from google.protobuf import message_factory
from pydantic import BaseModel

from asgi_micro import Context, errors
from asgi_micro.client.grpc import GrpcTransport, _serialize, _shape_of
from asgi_micro.codec import CODECS, MessageType
from asgi_micro.protobuf import ProtoSchema
from example_apps.greeter.messages import HelloRequest, HelloResponse

from .conftest import Greeter

PROTOBUF = "application/protobuf"


@pytest.fixture
async def http(greeter: Greeter) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://{greeter.http}", trust_env=False) as client:
        yield client


@pytest.fixture
async def transport() -> AsyncIterator[GrpcTransport]:
    async with GrpcTransport() as transport:
        yield transport


async def hello(
    protocol: str,
    greeter: Greeter,
    http: httpx.AsyncClient,
    transport: GrpcTransport,
    request: HelloRequest,
) -> HelloResponse:
    """``Greeter.Hello`` with metadata ``greeting: Hi``, by ``protocol``."""
    if protocol == "grpc":
        reply: HelloResponse = await transport.unary(
            greeter.grpc,
            "/greeter.Greeter/Hello",
            request,
            response_model=HelloResponse,
            metadata=[("micro-greeting", "Hi")],
            timeout=10,
            service="greeter",
        )
        return reply
    content_type = "application/json" if protocol == "http-json" else PROTOBUF
    codec = CODECS[content_type]
    response = await http.post(
        "/greeter/hello",
        content=codec.encode(request),
        headers={"content-type": content_type, "accept": content_type, "micro-greeting": "Hi"},
    )
    if response.status_code != 200:
        raise errors.MicroError.from_dict(orjson.loads(response.content))
    assert response.headers["content-type"] == content_type
    decoded: HelloResponse = codec.decode(response.content, MessageType(HelloResponse))
    return decoded


@pytest.mark.parametrize("protocol", ["http-json", "http-protobuf", "grpc"])
async def test_the_same_handler_answers_alike_over_http_json_http_protobuf_and_grpc(
    protocol: str, greeter: Greeter, http: httpx.AsyncClient, transport: GrpcTransport
) -> None:
    request = HelloRequest(name="Ada")
    expected = await greeter.module.hello(request, Context(metadata={"greeting": "Hi"}))

    assert await hello(protocol, greeter, http, transport, request) == expected

    invalid = HelloRequest.model_construct(name="")  # min_length=1, checked by the server
    with pytest.raises(errors.BadRequest) as caught:
        await hello(protocol, greeter, http, transport, invalid)
    assert (caught.value.id, caught.value.code) == ("greeter", 400)
    assert caught.value.detail == "name: String should have at least 1 character"


@pytest.mark.parametrize("protocol", ["ndjson", "sse", "grpc"])
async def test_a_stream_of_replies_is_alike_over_ndjson_sse_and_grpc(
    protocol: str, greeter: Greeter, http: httpx.AsyncClient, transport: GrpcTransport
) -> None:
    request = greeter.module.GreetingsRequest(name="Ada", count=3)
    expected = [reply async for reply in greeter.module.greetings(request, Context(metadata={}))]
    replies: list[Any]
    if protocol == "grpc":
        replies = [
            reply
            async for reply in transport.server_stream(
                greeter.grpc,
                "/greeter.Greeter/Greetings",
                request,
                response_model=HelloResponse,
                timeout=10,
            )
        ]
    else:
        accept = "application/x-ndjson" if protocol == "ndjson" else "text/event-stream"
        response = await http.post(
            "/greeter/greetings", json=request.model_dump(), headers={"accept": accept}
        )
        assert response.headers["content-type"] == accept
        if protocol == "ndjson":
            lines = response.text.splitlines()
        else:
            events = response.text.split("\n\n")
            assert events[-1] == ""
            lines = [event.removeprefix("data: ") for event in events[:-1]]
        replies = [HelloResponse.model_validate_json(line) for line in lines]
    assert replies == expected


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"name": 5}, "name: Input should be a valid string"),
        ({"name": ["Ada"]}, "name: Input should be a valid string"),
        ({"name": ""}, "name: String should have at least 1 character"),
    ],
)
async def test_the_same_bad_body_is_the_same_error_over_http_and_grpc(
    greeter: Greeter, http: httpx.AsyncClient, transport: GrpcTransport, body: Any, detail: str
) -> None:
    """A dict sent over gRPC is validated against the method's message as the service
    validates it over HTTP: the same class, id and detail (it once came back as
    ``asgi_micro.client`` with protobuf's json_format text)."""
    over_http = await http.post("/greeter/hello", json=body)
    assert over_http.status_code == 400
    with pytest.raises(errors.BadRequest) as over_grpc:
        await transport.unary(
            greeter.grpc, "/greeter.Greeter/Hello", body, timeout=10, service="greeter"
        )
    assert over_http.json()["detail"] == detail
    assert (over_grpc.value.id, over_grpc.value.detail) == ("greeter", detail)
    assert over_grpc.value.to_dict() == over_http.json()


class Line(BaseModel):
    sku: str
    quantity: int


class Order(BaseModel):
    id: int
    lines: list[Line]
    tags: dict[str, str] = {}
    paid: bool = False


def test_a_dict_maps_onto_nested_repeated_and_map_fields() -> None:
    """Unknown keys are left out (as the server's model leaves them out over HTTP); nested
    messages, lists and maps are checked field by field, with pydantic's own wording."""
    schema = ProtoSchema(package="shop")
    schema.add_message(Order)
    schema.build()
    remote = message_factory.GetMessageClass(schema.pool.FindMessageTypeByName("shop.Order"))
    shape = _shape_of(remote.DESCRIPTOR)
    data = _serialize(
        remote,
        shape,
        {"id": "7", "lines": [{"sku": "a", "quantity": 2}], "tags": {"k": "v"}, "unknown": 1},
    )
    decoded = remote.FromString(data)
    assert (decoded.id, decoded.lines[0].sku, decoded.lines[0].quantity) == (7, "a", 2)
    assert dict(decoded.tags) == {"k": "v"}
    with pytest.raises(errors.BadRequest) as caught:
        _serialize(remote, shape, {"id": 1, "lines": [{"sku": 3}], "paid": "maybe"})
    assert caught.value.detail == (
        "lines.0.sku: Input should be a valid string; "
        "paid: Input should be a valid boolean, unable to interpret input"
    )
