"""A service never builds a redirect from the ``Host`` header: the client chooses it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from pydantic import BaseModel

from asgi_micro import MicroMiddleware, MicroRouter, Service
from asgi_micro.redirects import relative_redirect
from asgi_micro.registry.memory import MemoryRegistry
from tests.helpers import serve


class Greeting(BaseModel):
    name: str


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    greeter = MicroRouter("Greeter")

    @greeter.rpc()
    async def hello(req: Greeting) -> Greeting:
        return req

    app = FastAPI()
    app.include_router(greeter)

    @app.get("/items/")
    async def items() -> list[str]:
        return []

    @app.get("/moved")
    async def moved(request: Request) -> RedirectResponse:
        return RedirectResponse(request.url_for("items"))  # absolute, from the Host header

    @app.get("/elsewhere")
    async def elsewhere() -> RedirectResponse:
        return RedirectResponse("https://docs.example/greeter")

    app.add_middleware(
        MicroMiddleware, service=Service("greeter", registry=MemoryRegistry(), grpc=False)
    )
    async with serve(app) as address, httpx.AsyncClient(base_url=f"http://{address}") as client:
        yield client


async def test_a_trailing_slash_redirect_is_relative(http: httpx.AsyncClient) -> None:
    for host in ("evil.example", "evil.example:8443"):
        response = await http.post(
            "/greeter/hello/?x=1", json={"name": "Ada"}, headers={"host": host}
        )
        assert response.status_code == 307
        assert response.headers["location"] == "/greeter/hello?x=1"
    added = await http.get("/items", headers={"host": "evil.example"})
    assert (added.status_code, added.headers["location"]) == (307, "/items/")
    # Followed, it reaches the same server.
    followed = await http.post("/greeter/hello/", json={"name": "Ada"}, follow_redirects=True)
    assert (followed.status_code, followed.json()) == (200, {"name": "Ada"})


async def test_the_apps_own_redirects(http: httpx.AsyncClient) -> None:
    built_from_host = await http.get("/moved", headers={"host": "evil.example"})
    assert built_from_host.headers["location"] == "/items/"
    away = await http.get("/elsewhere", headers={"host": "evil.example"})
    assert away.headers["location"] == "https://docs.example/greeter"


@pytest.mark.parametrize(
    ("location", "relative"),
    [
        (b"http://evil.example/a?b=c#d", b"/a?b=c#d"),
        (b"http://EVIL.example", b"/"),
        # What would be read as another server's address stays a path on this one.
        (b"http://evil.example//other.example/x", b"/%2Fother.example/x"),
        (b"http://evil.example/\\other.example", b"/%5Cother.example"),
        (b"http://other.example/a", b"http://other.example/a"),
        (b"/already/relative", b"/already/relative"),
        (b"mailto:someone@evil.example", b"mailto:someone@evil.example"),
    ],
)
def test_relative_redirect(location: bytes, relative: bytes) -> None:
    scope = {
        "type": "http",
        "scheme": "http",
        "path": "/",
        "headers": [(b"host", b"evil.example")],
        "server": ("127.0.0.1", 8000),
    }
    start = {
        "type": "http.response.start",
        "status": 307,
        "headers": [(b"content-length", b"0"), (b"location", location)],
    }
    rewritten = relative_redirect(start, scope)
    assert rewritten["headers"] == [(b"content-length", b"0"), (b"location", relative)]
    assert start["headers"][1] == (b"location", location)  # the app's message is its own
