"""The dashboard's pages and call endpoint through ``httpx.ASGITransport``, in front of a real
service served on loopback and a memory registry the test shares with it; its event stream
over a real socket (``ASGITransport`` reads a response whole, and this one never ends)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, Field

from asgi_micro import MicroRouter, Service
from asgi_micro.auth import Resource, Rule
from asgi_micro.auth.guard import PROOF_KEY, Guard
from asgi_micro.registry import Endpoint, Node
from asgi_micro.registry import Service as ServiceRecord
from asgi_micro.registry.memory import MemoryRegistry
from asgi_micro.web import Dashboard
from asgi_micro.web.schemas import example_of
from tests.helpers import free_port, serve


class HelloRequest(BaseModel):
    name: str = Field(min_length=1)


class HelloReply(BaseModel):
    message: str


class Greeted(BaseModel):
    name: str


@dataclass
class Setup:
    name: str
    topic: str
    registry: MemoryRegistry
    service: Service
    address: str
    http: httpx.AsyncClient


def greeter(
    name: str, topic: str, registry: MemoryRegistry, **options: Any
) -> tuple[Service, FastAPI]:
    service = Service(
        name, version="1.2.0", registry=registry, broker=f"memory://{name}", **options
    )
    router = MicroRouter("Greeter")

    @router.rpc()
    async def hello(req: HelloRequest) -> HelloReply:
        """Greet one person."""
        return HelloReply(message=f"Hello {req.name}")

    @router.rpc()
    async def twice(req: HelloRequest) -> AsyncIterator[HelloReply]:
        for number in (1, 2):
            yield HelloReply(message=f"Hello {req.name} ({number})")

    service.publishes(topic, Greeted)

    @service.subscribe(topic, queue="audit")
    async def on_greeted(event: Greeted) -> None: ...

    app = FastAPI(lifespan=service.lifespan)
    app.include_router(router)

    @app.get("/plain")
    async def plain() -> dict[str, str]:
        return {}

    return service, app


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    unique = uuid.uuid4().hex[:8]
    name, topic = f"greeter-{unique}", f"user.greeted.{unique}"
    registry = MemoryRegistry()
    service, app = greeter(name, topic, registry)
    async with serve(app) as address, Dashboard(registry, timeout=10.0) as dashboard:
        await service.wait_registered(timeout=30.0)
        transport = httpx.ASGITransport(app=dashboard.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://dashboard") as http:
            yield Setup(name, topic, registry, service, address, http)


async def call(setup: Setup, endpoint: str, request: object, **headers: str) -> httpx.Response:
    body = {"service": setup.name, "endpoint": endpoint, "request": request}
    return await setup.http.post(
        "/api/call",
        content=orjson.dumps(body),
        headers={"content-type": "application/json"} | headers,
    )


async def test_the_index_lists_services_with_versions_and_nodes(setup: Setup) -> None:
    response = await setup.http.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in response.headers["content-security-policy"]
    row = f'<tr data-service="{setup.name}"><td><a href="/services/{setup.name}">{setup.name}</a>'
    assert row + "</td><td>1.2.0</td><td>1</td></tr>" in response.text
    assert 'data-live="/fragments/services" data-watch="*"' in response.text
    fragment = await setup.http.get("/fragments/services")
    assert row in fragment.text
    assert "<html" not in fragment.text


async def test_a_service_page_shows_nodes_endpoints_and_topics(setup: Setup) -> None:
    response = await setup.http.get(f"/services/{setup.name}")
    assert response.status_code == 200, response.text
    page = response.text
    # The node, and what it said of itself.
    assert f"<td>{setup.address}</td><td>1.2.0</td>" in page
    assert 'data-health="serving">serving</td>' in page
    assert "requests, 0 errors, 0 in flight, up " in page
    # Endpoints, their schemas, and a form for each RPC endpoint, prefilled from the schema.
    assert "<h3>Greeter.Hello</h3>" in page
    assert "Greet one person." in page
    assert "<summary>request: HelloRequest</summary>" in page
    assert f'data-service="{setup.name}" data-endpoint="Greeter.Hello"' in page
    assert "&quot;name&quot;: &quot;&quot;" in page
    assert '<span class="tag">server stream</span>' in page
    assert "<h3>GET /plain</h3>" in page
    assert page.count('<form class="call"') == 2  # the plain route gets none
    # Topics, from the node's AsyncAPI document.
    assert (
        f'<tr data-topic="{setup.topic}"><td><code>{setup.topic}</code></td><td>publishes' in page
    )
    assert "<td>subscribes</td><td>1.2.0</td><td>audit</td><td>Greeted</td>" in page


async def test_the_topics_page_lists_publishers_and_subscribers(setup: Setup) -> None:
    page = (await setup.http.get("/topics")).text
    link = f'<a href="/services/{setup.name}">{setup.name}</a> 1.2.0'
    assert f"<td>publishes</td><td>{link}</td><td>(every node)</td><td>Greeted</td>" in page
    assert f"<td>subscribes</td><td>{link}</td><td>audit</td><td>Greeted</td>" in page


async def test_an_unknown_service_is_not_found(setup: Setup) -> None:
    response = await setup.http.get("/services/nobody-" + uuid.uuid4().hex)
    assert response.status_code == 404
    assert "No service named" in response.text


async def test_everything_from_the_registry_is_escaped(setup: Setup) -> None:
    hostile = "<script>alert(1)</script>"
    record = ServiceRecord(
        name=f'evil"{hostile}',
        version=hostile,
        endpoints=[Endpoint(f"E.{hostile}", {"title": hostile}, None, {"kind": "rpc"})],
        nodes=[Node(f"n{hostile}", f"127.0.0.1:{free_port()}", {"x": hostile})],
    )
    await setup.registry.register(record)
    pages = [
        (await setup.http.get("/")).text,
        (await setup.http.get("/services/" + httpx.URL(path=record.name).raw_path.decode())).text,
    ]
    assert "E.&lt;script&gt;" in pages[1]
    for page in pages:
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert hostile not in page
        assert 'evil"' not in page  # no attribute is closed early


async def test_a_registration_proof_is_not_shown(setup: Setup) -> None:
    proof = "proof-" + uuid.uuid4().hex
    node = Node(f"{setup.name}-proved", f"127.0.0.1:{free_port()}", {PROOF_KEY: proof})
    await setup.registry.register(ServiceRecord(setup.name, "1.2.0", nodes=[node]))
    page = (await setup.http.get(f"/fragments/nodes/{setup.name}")).text
    assert f'data-node="{node.id}"' in page
    assert f"{PROOF_KEY}=(proof)" in page
    assert proof not in page
    assert 'data-health="unreachable"' in page  # nobody listens there


async def test_a_call_returns_the_reply(setup: Setup) -> None:
    response = await call(setup, "Greeter.Hello", {"name": "Ada"})
    assert (response.status_code, response.json()) == (200, {"reply": {"message": "Hello Ada"}})


async def test_a_stream_returns_its_replies(setup: Setup) -> None:
    response = await call(setup, "Greeter.Twice", {"name": "Ada"})
    replies = [{"message": "Hello Ada (1)"}, {"message": "Hello Ada (2)"}]
    assert (response.status_code, response.json()) == (200, {"replies": replies})


async def test_a_service_error_comes_back_in_go_micro_shape(setup: Setup) -> None:
    response = await call(setup, "Greeter.Hello", {"name": ""})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["id"], error["code"], error["status"]) == (setup.name, 400, "Bad Request")
    assert "at least 1 character" in error["detail"]


@pytest.mark.parametrize("endpoint", ["Greeter.Nothing", "GET /plain"])
async def test_only_rpc_endpoints_in_the_registry_are_called(setup: Setup, endpoint: str) -> None:
    response = await call(setup, endpoint, {})
    assert response.status_code == 404
    assert response.json()["error"]["id"] == "asgi-micro-web"
    unknown = await setup.http.post(
        "/api/call",
        json={"service": "nobody-" + uuid.uuid4().hex, "endpoint": "A.B", "request": {}},
    )
    assert unknown.status_code == 404


async def test_calls_come_from_the_dashboard_s_own_pages_only(setup: Setup) -> None:
    elsewhere = await call(setup, "Greeter.Hello", {"name": "Ada"}, origin="https://evil.test")
    assert elsewhere.status_code == 403
    same = await call(setup, "Greeter.Hello", {"name": "Ada"}, origin="http://dashboard")
    assert same.status_code == 200
    # What a cross-site HTML form can send.
    form = await setup.http.post("/api/call", data={"service": setup.name, "endpoint": "x"})
    assert form.status_code == 400
    assert "application/json" in form.json()["error"]["detail"]


@pytest.mark.parametrize(
    "body", [b"{", b"[]", b'{"service": "", "endpoint": "A.B"}', b'{"service": 1}']
)
async def test_a_malformed_call_is_refused(setup: Setup, body: bytes) -> None:
    response = await setup.http.post(
        "/api/call", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert set(response.json()["error"]) == {"id", "code", "detail", "status"}


async def test_with_auth_on_a_call_goes_with_the_page_s_token_or_the_dashboard_s(
    tmp_path: Path,
) -> None:
    name = f"guarded-{uuid.uuid4().hex[:8]}"
    registry = MemoryRegistry(name)  # each dashboard has one of its own: stopping it forgets
    port = free_port()  # two servers in this process: the greeter's address is not guessed
    service, app = greeter(
        name,
        f"t.{name}",
        registry,
        auth=f"jwt://?keys={tmp_path / 'k.json'}",
        address=f"127.0.0.1:{port}",
    )
    seen: list[str] = []  # calls that reached a node that is not the greeter's (not probes)

    async def impostor(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            if not scope["path"].startswith("/_micro/"):  # the page looks at every node
                seen.append(dict(scope["headers"]).get(b"authorization", b"").decode())
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b'{"message": "stolen"}'})

    async with serve(app, port=port) as address, serve(impostor) as stranger:
        await service.wait_registered(timeout=30.0)
        account = await service.auth.generate("ada", scopes=["user"])
        await service.auth.grant(Rule("users", "user", Resource("service", name, "*")))
        await service.guard.load_rules()
        ada = (await service.auth.token(id="ada", secret=account.secret)).access_token
        # A node of the greeter's name whose registration proves nothing: no token goes to it.
        [record] = await registry.get_service(name)
        await registry.register(
            ServiceRecord(
                name,
                record.version,
                endpoints=record.endpoints,
                nodes=[Node(f"{name}-x", stranger, {"protocol": "http"})],
            )
        )
        trusts = Guard(service.auth, service="asgi-micro-web", on=True).trusts
        for token in (None, ada):
            own = MemoryRegistry(name)
            async with Dashboard(own, token=token, trusts=trusts) as dashboard:
                transport = httpx.ASGITransport(app=dashboard.app)
                async with httpx.AsyncClient(transport=transport, base_url="http://d") as http:
                    setup = Setup(name, "", registry, service, address, http)
                    page = (await http.get(f"/services/{name}")).text
                    assert '<input type="password" name="token" id="token"' in page
                    for _ in range(4):  # round robin would reach the stranger among these
                        given = await call(
                            setup, "Greeter.Hello", {"name": "Ada"}, authorization=f"Bearer {ada}"
                        )
                        assert given.json() == {"reply": {"message": "Hello Ada"}}, given.text
                    none = await call(setup, "Greeter.Hello", {"name": "Ada"})
                    if token is None:  # anonymous: what the service answers anyone
                        assert none.status_code == 401, none.text
                        assert none.json()["error"]["id"] == "asgi_micro.auth"
                    else:  # the dashboard's own token
                        assert none.json() == {"reply": {"message": "Hello Ada"}}
                    for wrong in ("Basic YWRhOng=", "Bearer ", "Bearer a b"):
                        refused = await call(
                            setup, "Greeter.Hello", {"name": "A"}, authorization=wrong
                        )
                        assert refused.status_code == 400, (wrong, refused.text)
    assert seen == []


async def test_the_script_and_styles_are_served(setup: Setup) -> None:
    script = await setup.http.get("/static/dashboard.js")
    assert script.status_code == 200
    assert "EventSource" in script.text
    assert (await setup.http.get("/static/dashboard.css")).status_code == 200


async def test_the_event_stream_tells_of_changed_services() -> None:
    registry = MemoryRegistry()
    name = f"live-{uuid.uuid4().hex[:8]}"
    async with (
        serve(Dashboard(registry).app) as address,
        httpx.AsyncClient(base_url=f"http://{address}", trust_env=False) as http,
        http.stream("GET", "/events", timeout=30.0) as events,
    ):
        assert events.headers["content-type"].startswith("text/event-stream")
        lines = events.aiter_lines()
        assert await anext(lines) == "retry: 2000"
        assert await anext(lines) == "event: ready"
        node = Node(f"{name}-1", f"127.0.0.1:{free_port()}")
        await registry.register(ServiceRecord(name, nodes=[node]))
        async for line in lines:
            if line.startswith("event: change"):
                break
        assert orjson.loads((await anext(lines)).removeprefix("data: ")) == [name]
        with contextlib.suppress(httpx.ReadError):
            await events.aclose()


@pytest.mark.parametrize(
    ("schema", "example"),
    [
        (None, {}),
        (
            {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "count": {"type": "integer", "default": 3},
                    "size": {"type": "integer", "minimum": 1},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "kind": {"enum": ["a", "b"]},
                    "note": {"anyOf": [{"type": "null"}, {"type": "string"}]},
                    "inner": {"$ref": "#/$defs/Inner"},
                },
                "$defs": {"Inner": {"type": "object", "properties": {"on": {"type": "boolean"}}}},
            },
            {
                "name": "",
                "count": 3,
                "size": 1,
                "tags": [],
                "kind": "a",
                "note": "",
                "inner": {"on": False},
            },
        ),
        (
            {
                "$ref": "#/$defs/Loop",
                "$defs": {"Loop": {"properties": {"next": {"$ref": "#/$defs/Loop"}}}},
            },
            {"next": {"next": {"next": None}}},
        ),
    ],
)
def test_call_forms_start_from_the_schema(
    schema: dict[str, object] | None, example: object
) -> None:
    assert example_of(schema) == example


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("127.0.0.1:8082", 200),
        ("localhost:8082", 200),
        ("[::1]:8082", 200),
        ("rebound.example:8082", 421),
        ("127.0.0.1.example", 421),
        ("", 421),
    ],
)
async def test_on_loopback_it_answers_loopback_names_only(host: str, status: int) -> None:
    async with Dashboard(MemoryRegistry(), loopback_only=True) as dashboard:
        transport = httpx.ASGITransport(app=dashboard.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            response = await http.get("/", headers={"host": host})
    assert response.status_code == status


def test_the_command_refuses_an_unknown_registry() -> None:
    from typer.testing import CliRunner

    from asgi_micro.cli import app

    result = CliRunner().invoke(app, ["web", "--registry", "nowhere://x", "--port", "1"])
    assert result.exit_code == 2, result.output
    assert "nowhere" in result.output


def test_the_command_refuses_a_token_that_cannot_be_one() -> None:
    from typer.testing import CliRunner

    from asgi_micro.cli import app

    result = CliRunner().invoke(app, ["web", "--token", "not one", "--port", "1"])
    assert result.exit_code == 2, result.output
    assert "a bearer token is printable ASCII without spaces" in result.output
    assert "not one" not in result.output  # a secret is not echoed
