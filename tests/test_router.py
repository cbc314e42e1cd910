"""MicroRouter and the RPC fast path, in process (no sockets: httpx's ASGI transport)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import msgpack
import orjson
import pytest
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from pydantic import BaseModel, Field

from asgi_micro import MicroRouter, current_context, errors
from asgi_micro.fastapi import Context
from asgi_micro.router import ENDPOINT_EXTENSION


class Greeting(BaseModel):
    name: str = Field(min_length=1)
    times: int = 1


class Reply(BaseModel):
    message: str


def make_app(router: MicroRouter, **include: Any) -> FastAPI:
    app = FastAPI()
    app.include_router(router, **include)
    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    router = MicroRouter("Greeter")

    @router.rpc()
    async def hello(req: Greeting) -> Reply:
        return Reply(message=" ".join([f"Hello {req.name}"] * req.times))

    @router.rpc()
    async def as_dict(req: Greeting) -> Reply:
        return {"message": req.name}  # type: ignore[return-value]

    @router.rpc()
    async def broken(req: Greeting) -> Reply:
        return {"wrong": 1}  # type: ignore[return-value]

    @router.rpc()
    async def fails(req: Greeting) -> Reply:
        raise RuntimeError("secret internals")

    @router.rpc()
    async def refuses(req: Greeting) -> Reply:
        raise errors.Forbidden(f"{req.name} may not")

    @router.rpc()
    async def ping() -> None:
        return None

    @router.rpc()
    def sync_hello(req: Greeting) -> Reply:
        return Reply(message=f"sync {req.name}")

    @router.rpc()
    async def slow(req: Greeting) -> Reply:
        await asyncio.sleep(5)
        return Reply(message="late")

    @router.rpc()
    async def metadata(req: Greeting, ctx: Context) -> Reply:
        current = current_context()
        assert current is ctx
        return Reply(message=orjson.dumps(ctx.metadata).decode())

    @router.get("/items/{item_id}")
    async def get_item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    transport = httpx.ASGITransport(app=make_app(router))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


async def test_json_round_trip(client: httpx.AsyncClient) -> None:
    response = await client.post("/greeter/hello", json={"name": "Ada", "times": 2})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"message": "Hello Ada Hello Ada"}


async def test_msgpack_round_trip(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/greeter/hello",
        content=msgpack.packb({"name": "Ada"}),
        headers={"content-type": "application/msgpack", "accept": "application/msgpack"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/msgpack"
    assert msgpack.unpackb(response.content) == {"message": "Hello Ada"}


async def test_reply_codec_follows_accept(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/greeter/hello",
        json={"name": "Ada"},
        headers={"accept": "application/msgpack;q=0.9, text/html"},
    )
    assert msgpack.unpackb(response.content) == {"message": "Hello Ada"}


async def test_unsupported_content_type_is_415(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/greeter/hello", content=b"<a/>", headers={"content-type": "text/xml"}
    )
    assert response.status_code == 415
    assert response.json() == {
        "id": "Greeter.Hello",
        "code": 415,
        "detail": "unsupported content type 'text/xml'",
        "status": "Unsupported Media Type",
    }


async def test_unacceptable_accept_is_406(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/greeter/hello", json={"name": "Ada"}, headers={"accept": "text/html"}
    )
    assert response.status_code == 406
    assert response.json()["code"] == 406


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"{not json", "body: Invalid JSON"),
        (b"{}", "name: Field required"),
        (b'{"name": ""}', "name: String should have at least 1 character"),
        (b'{"name": "Ada", "times": "many"}', "times: Input should be a valid integer"),
        (b"", "name: Field required"),
    ],
)
async def test_bad_request_names_the_fields(
    client: httpx.AsyncClient, body: bytes, detail: str
) -> None:
    response = await client.post(
        "/greeter/hello", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    error = response.json()
    assert set(error) == {"id", "code", "detail", "status"}
    assert (error["code"], error["status"]) == (400, "Bad Request")
    assert error["detail"].startswith(detail)


async def test_handler_errors_keep_their_class(client: httpx.AsyncClient) -> None:
    response = await client.post("/greeter/refuses", json={"name": "Eve"})
    assert response.status_code == 403
    assert response.json()["detail"] == "Eve may not"


async def test_handler_exception_is_500_without_internals(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="asgi_micro"):
        response = await client.post("/greeter/fails", json={"name": "Ada"})
    assert response.status_code == 500
    assert response.json() == {
        "id": "Greeter.Fails",
        "code": 500,
        "detail": "Internal Server Error",
        "status": "Internal Server Error",
    }
    assert "secret internals" not in response.text
    assert "secret internals" in caplog.text  # but the server log has it


async def test_dict_reply_is_validated(client: httpx.AsyncClient) -> None:
    assert (await client.post("/greeter/as_dict", json={"name": "Ada"})).json() == {
        "message": "Ada"
    }
    assert (await client.post("/greeter/broken", json={"name": "Ada"})).status_code == 500


async def test_no_request_and_no_reply(client: httpx.AsyncClient) -> None:
    response = await client.post("/greeter/ping", content=b"ignored")
    assert (response.status_code, response.json()) == (200, {})


async def test_sync_handler_runs(client: httpx.AsyncClient) -> None:
    assert (await client.post("/greeter/sync_hello", json={"name": "Ada"})).json() == {
        "message": "sync Ada"
    }


async def test_deadline_gives_408_in_time(client: httpx.AsyncClient) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await client.post(
        "/greeter/slow", json={"name": "Ada"}, headers={"Micro-Timeout": "100"}
    )
    assert response.status_code == 408
    assert response.json()["status"] == "Request Timeout"
    assert loop.time() - started < 1.0


async def test_metadata_reaches_the_handler(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/greeter/metadata", json={"name": "Ada"}, headers={"Micro-Tenant": "acme", "X-Other": "no"}
    )
    assert orjson.loads(response.json()["message"]) == {"tenant": "acme"}


async def test_oversized_body_is_413(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/greeter/hello",
        content=b" " * (5 * 1024 * 1024),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413


async def test_plain_routes_use_the_error_shape(client: httpx.AsyncClient) -> None:
    assert (await client.get("/greeter/items/3")).json() == {"id": 3}
    response = await client.get("/greeter/items/three")
    assert response.status_code == 400
    assert response.json()["detail"].startswith("path.item_id: Input should be a valid integer")


async def test_wrong_method_is_405(client: httpx.AsyncClient) -> None:
    assert (await client.get("/greeter/hello")).status_code == 405


def test_openapi_names_the_endpoints() -> None:
    router = MicroRouter("Greeter")

    @router.rpc(idempotent=True)
    async def hello(req: Greeting) -> Reply:
        return Reply(message=req.name)

    @router.get("/items/{item_id}")
    async def get_item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    spec = make_app(router).openapi()
    operation = spec["paths"]["/greeter/hello"]["post"]
    assert operation[ENDPOINT_EXTENSION] == "Greeter.Hello"
    assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "Greeting"
    )
    assert spec["paths"]["/greeter/items/{item_id}"]["get"][ENDPOINT_EXTENSION] == "Greeter.GetItem"


async def test_router_dependencies_are_never_skipped() -> None:
    """include_router(dependencies=...) guards RPC endpoints too: the fast path must not skip it."""
    router = MicroRouter("Vault")

    @router.rpc()
    async def open(req: Greeting) -> Reply:
        return Reply(message="opened")

    async def require_token(x_token: Annotated[str | None, Header()] = None) -> None:
        if x_token != "secret":
            raise HTTPException(401, "missing token")

    app = make_app(router, dependencies=[Depends(require_token)])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as http:
        denied = await http.post("/vault/open", json={"name": "Ada"})
        allowed = await http.post(
            "/vault/open", json={"name": "Ada"}, headers={"x-token": "secret"}
        )
    assert denied.status_code == 401
    assert denied.json()["detail"] == "missing token"
    assert allowed.json() == {"message": "opened"}


def prefix() -> str:
    return ">"


async def test_fastapi_dependencies_and_request_still_work() -> None:
    router = MicroRouter("Echo")

    @router.rpc()
    async def echo(req: Greeting, request: Request, mark: Annotated[str, Depends(prefix)]) -> Reply:
        return Reply(message=f"{mark} {req.name} {request.url.path}")

    app = make_app(router)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as http:
        response = await http.post("/echo/echo", json={"name": "Ada"})
        invalid = await http.post("/echo/echo", json={})
    assert response.json() == {"message": "> Ada /echo/echo"}
    assert invalid.status_code == 400
    assert "name" in invalid.json()["detail"]


async def test_dependency_overrides_apply() -> None:
    router = MicroRouter("Meta")

    @router.rpc()
    async def who(req: Greeting, ctx: Context) -> Reply:
        return Reply(message=ctx.metadata.get("user", "nobody"))

    app = make_app(router)
    from asgi_micro.context import Context as ContextValue

    dependency = Context.__metadata__[0].dependency  # type: ignore[attr-defined]
    app.dependency_overrides[dependency] = lambda: ContextValue(metadata={"user": "test-double"})
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as http:
        response = await http.post("/meta/who", json={"name": "Ada"})
    assert response.json() == {"message": "test-double"}


def test_definition_errors_are_clear() -> None:
    router = MicroRouter("Bad")
    with pytest.raises(TypeError, match="one request message"):

        @router.rpc()
        async def two(a: Greeting, b: Greeting) -> Reply: ...

    with pytest.raises(TypeError, match="annotate the return type"):

        @router.rpc()
        async def untyped(a: Greeting):  # type: ignore[no-untyped-def]
            ...

    with pytest.raises(TypeError, match="pydantic model, a protobuf message or None"):

        @router.rpc()
        async def scalar(a: Greeting) -> int: ...

    @router.rpc()
    async def once(a: Greeting) -> Reply: ...

    with pytest.raises(ValueError, match="defined twice"):

        @router.rpc(name="Once")
        async def again(a: Greeting) -> Reply: ...

    with pytest.raises(ValueError, match="identifier"):
        MicroRouter("not a name")


async def test_custom_path_and_name() -> None:
    router = MicroRouter("Greeter", prefix="/api")

    @router.rpc("/say-hi", name="SayHi")
    async def hi(req: Greeting) -> Reply:
        return Reply(message=req.name)

    app = make_app(router)
    assert app.openapi()["paths"]["/api/say-hi"]["post"][ENDPOINT_EXTENSION] == "Greeter.SayHi"
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as http:
        assert (await http.post("/api/say-hi", json={"name": "Ada"})).json() == {"message": "Ada"}
