"""The OpenAPI document of a service says what it serves: each answer below is checked against
the document the service serves at ``/openapi.json`` (status, media type and body)."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jsonschema_rs
import msgpack
import orjson
import pytest
import schemathesis
from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel, Field

from asgi_micro import MicroMiddleware, MicroRouter, Service, errors
from asgi_micro.codec import CODECS, PROTOBUF, message_type
from asgi_micro.openapi import ERROR_SCHEMA, ERROR_SCHEMA_NAME
from asgi_micro.registry.memory import MemoryRegistry
from tests.helpers import serve


class Order(BaseModel):
    item: str = Field(min_length=1)
    quantity: int = Field(default=1, ge=1, le=10)


class Receipt(BaseModel):
    item: str
    number: int


class Note(BaseModel):
    text: str = ""


def shop_app(service: Service) -> FastAPI:
    shop = MicroRouter("Shop")

    @shop.rpc(max_body_size=1024, responses={404: {"description": "Not Found: no such item"}})
    async def order(req: Order) -> Receipt:
        if req.item == "unicorn":
            raise errors.NotFound("no unicorns")
        return Receipt(item=req.item, number=req.quantity)

    @shop.rpc()
    async def deliveries(req: Order) -> AsyncIterator[Receipt]:
        for number in range(1, req.quantity + 1):
            yield Receipt(item=req.item, number=number)
        if req.item == "last one":
            raise errors.Conflict("sold out meanwhile")

    @shop.rpc()
    async def wait(req: Note) -> Note:
        await asyncio.sleep(5)
        return req

    @shop.rpc()
    async def order_by_fastapi(req: Order, request: Request) -> Receipt:
        return Receipt(item=req.item, number=req.quantity)

    @shop.rpc()
    async def deliveries_by_fastapi(req: Order, request: Request) -> AsyncIterator[Receipt]:
        yield Receipt(item=req.item, number=1)

    app = FastAPI(lifespan=service.lifespan)
    app.include_router(shop)

    @app.post("/notes")
    async def add_note(note: Note) -> Note:
        return note

    @app.get("/notes/{number}", responses={404: {"description": "Not Found: no such note"}})
    async def read_note(number: int) -> Note:
        raise HTTPException(404, f"no note {number}")

    return app


@pytest.fixture
async def shop() -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, Any]]]:
    service = Service("shop", registry=MemoryRegistry(), grpc=False)
    app = shop_app(service)
    app.openapi()  # a document FastAPI built before the service served the app
    async with serve(app) as address, httpx.AsyncClient(base_url=f"http://{address}") as http:
        document = (await http.get("/openapi.json")).json()
        yield http, document


def served_as_documented(
    document: dict[str, Any], response: httpx.Response, path: str | None = None
) -> str:
    """Check ``response`` against ``document`` (at ``path``, by default the request's): a
    documented status, a documented media type and a body that fits; returns the media type."""
    request = response.request
    path = path or request.url.path
    operation = document["paths"][path][request.method.lower()]
    documented = operation["responses"]
    status = str(response.status_code)
    assert status in documented, f"{request.method} {path}: {status} is not in {set(documented)}"
    media_type = response.headers["content-type"].partition(";")[0]
    content = documented[status]["content"]
    assert media_type in content, f"{request.method} {path} {status}: {media_type} not in {content}"
    if "itemSchema" in content[media_type] and media_type != "text/event-stream":
        # A stream of JSON lines: each line one item (schemathesis validates SSE events only).
        schema = {**content[media_type]["itemSchema"], "components": document["components"]}
        validator = jsonschema_rs.validator_for(schema)
        for line in response.content.splitlines():
            validator.validate(orjson.loads(line))
    else:
        operations = schemathesis.openapi.from_dict(document)
        operations[path][request.method].validate_response(response)
    return media_type


async def test_invalid_input_is_a_documented_400_in_the_error_shape(
    shop: tuple[httpx.AsyncClient, dict[str, Any]],
) -> None:
    http, document = shop
    assert "422" not in orjson.dumps(document["paths"]).decode()
    schemas = document["components"]["schemas"]
    assert schemas[ERROR_SCHEMA_NAME] == ERROR_SCHEMA
    assert {"HTTPValidationError", "ValidationError"}.isdisjoint(schemas)

    for path in ("/shop/order", "/shop/order_by_fastapi", "/notes"):
        invalid = await http.post(path, json={"item": "", "quantity": 0, "text": 1})
        assert invalid.status_code == 400, invalid.text
        assert served_as_documented(document, invalid) == "application/json"
        assert set(invalid.json()) == set(ERROR_SCHEMA["required"])

    not_number = await http.get("/notes/one")
    assert not_number.status_code == 400
    served_as_documented(document, not_number, "/notes/{number}")
    # An error the app declares gets the error shape in the document, as on the wire.
    missing = await http.get("/notes/7")
    assert missing.status_code == 404
    served_as_documented(document, missing, "/notes/{number}")
    assert missing.json()["detail"] == "no note 7"
    no_such_item = await http.post("/shop/order", json={"item": "unicorn"})
    assert no_such_item.status_code == 404
    served_as_documented(document, no_such_item)


async def test_the_errors_of_the_framework_are_documented_where_they_are_sent(
    shop: tuple[httpx.AsyncClient, dict[str, Any]],
) -> None:
    http, document = shop
    late = await http.post("/shop/wait", json={}, headers={"micro-timeout": "50"})
    assert late.status_code == 408
    malformed_deadline = await http.post("/notes", json={}, headers={"micro-timeout": "soon"})
    assert malformed_deadline.status_code == 400
    unsupported = await http.post(
        "/shop/order", content=b"item=x", headers={"content-type": "text/plain"}
    )
    assert unsupported.status_code == 415
    unacceptable = await http.post(
        "/shop/order", json={"item": "x"}, headers={"accept": "text/html"}
    )
    assert unacceptable.status_code == 406
    no_stream_format = await http.post(
        "/shop/deliveries", json={"item": "x"}, headers={"accept": "application/msgpack"}
    )
    assert no_stream_format.status_code == 406
    too_large = await http.post(
        "/shop/order",
        content=b'{"item": "' + b"x" * 2048 + b'"}',
        headers={"content-type": "application/json"},
    )
    assert too_large.status_code == 413
    for response in (
        late,
        malformed_deadline,
        unsupported,
        unacceptable,
        no_stream_format,
        too_large,
    ):
        served_as_documented(document, response)
    # What only the fast path sends is documented there alone.
    by_fastapi = document["paths"]["/shop/order_by_fastapi"]["post"]["responses"]
    assert set(by_fastapi) == {"200", "400", "408", "413", "500"}


async def test_a_stream_is_documented_as_it_is_framed(
    shop: tuple[httpx.AsyncClient, dict[str, Any]],
) -> None:
    http, document = shop
    assert "application/jsonl" not in orjson.dumps(document["paths"]["/shop/deliveries"]).decode()

    ndjson = await http.post("/shop/deliveries", json={"item": "tea", "quantity": 2})
    assert ndjson.status_code == 200
    assert served_as_documented(document, ndjson) == "application/x-ndjson"
    assert [orjson.loads(line)["number"] for line in ndjson.content.splitlines()] == [1, 2]
    failed_midway = await http.post("/shop/deliveries", json={"item": "last one"})
    assert served_as_documented(document, failed_midway) == "application/x-ndjson"
    assert orjson.loads(failed_midway.content.splitlines()[-1])["error"]["code"] == 409

    for item in ("tea", "last one"):
        sse = await http.post(
            "/shop/deliveries", json={"item": item}, headers={"accept": "text/event-stream"}
        )
        assert sse.status_code == 200
        assert served_as_documented(document, sse) == "text/event-stream"
    assert b"event: error" in sse.content
    # Validation looks at the events: a reply of the wrong shape would not pass.
    wrong = httpx.Response(
        200,
        headers={"content-type": "text/event-stream"},
        content=b'data: {"item": 1}\n\n',
        request=sse.request,
    )
    wrong.elapsed = datetime.timedelta(0)
    with pytest.raises(AssertionError, match="SSE event violates schema"):
        served_as_documented(document, wrong)

    # FastAPI streams a handler it resolves itself: JSON lines, as documented there.
    by_fastapi = await http.post("/shop/deliveries_by_fastapi", json={"item": "tea"})
    assert served_as_documented(document, by_fastapi) == "application/jsonl"


async def test_rpc_bodies_are_documented_in_every_codec(
    shop: tuple[httpx.AsyncClient, dict[str, Any]],
) -> None:
    http, document = shop
    codecs = sorted({codec.content_type for codec in CODECS.values()})
    operation = document["paths"]["/shop/order"]["post"]
    assert sorted(operation["requestBody"]["content"]) == codecs
    assert sorted(operation["responses"]["200"]["content"]) == codecs
    assert operation["requestBody"]["required"] is True
    # An empty body is the empty message: required only when that is not a valid request.
    assert document["paths"]["/shop/wait"]["post"]["requestBody"]["required"] is False
    # FastAPI reads JSON alone.
    by_fastapi = document["paths"]["/shop/order_by_fastapi"]["post"]
    assert list(by_fastapi["requestBody"]["content"]) == ["application/json"]
    assert list(by_fastapi["responses"]["200"]["content"]) == ["application/json"]

    packed = await http.post(
        "/shop/order",
        content=msgpack.packb({"item": "tea", "quantity": 3}),
        headers={"content-type": "application/msgpack"},
    )
    assert served_as_documented(document, packed) == "application/msgpack"
    assert msgpack.unpackb(packed.content) == {"item": "tea", "number": 3}

    protobuf = await http.post(
        "/shop/order",
        content=PROTOBUF.encode(Order(item="tea")),
        headers={"content-type": "application/protobuf"},
    )
    assert protobuf.status_code == 200
    assert protobuf.headers["content-type"] in operation["responses"]["200"]["content"]
    reply = PROTOBUF.decode(protobuf.content, message_type(Receipt))
    assert reply == Receipt(item="tea", number=1)


async def test_the_document_is_frameworks_until_a_service_serves_the_app() -> None:
    """Without a service nothing reshapes a plain route's errors: FastAPI's 422 is true there."""
    app = FastAPI()

    @app.post("/notes")
    async def add_note(note: Note) -> Note:
        return note

    assert "422" in app.openapi()["paths"]["/notes"]["post"]["responses"]
    service = Service("notes", registry=MemoryRegistry(), grpc=False, max_message_size=1024)
    app.add_middleware(MicroMiddleware, service=service)
    async with serve(app) as address, httpx.AsyncClient(base_url=f"http://{address}") as http:
        document = (await http.get("/openapi.json")).json()
        invalid = await http.post("/notes", json={"text": 1})
        too_large = await http.post("/notes", json={"text": "x" * 2048})
    assert set(document["paths"]["/notes"]["post"]["responses"]) == {
        "200",
        "400",
        "408",
        "413",
        "500",
    }
    assert served_as_documented(document, invalid) == "application/json"
    assert too_large.status_code == 413
    assert served_as_documented(document, too_large) == "application/json"
    assert app.openapi() is app.openapi()  # built once
