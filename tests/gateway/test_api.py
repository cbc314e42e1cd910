"""``asgi-micro api``: the API gateway in front of the example greeter.

In process: the greeter's own router (``example_apps/greeter/app.py``) served by uvicorn as a
service on a registry it shares with the gateway, itself served by uvicorn; real sockets, real
HTTP on loopback. End to end: the console script in front of the greeter in a process of its
own, found through the test's mDNS domain.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import orjson
import pytest
from fastapi import FastAPI
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from asgi_micro import MicroRouter, Service
from asgi_micro.auth import Account as Account_
from asgi_micro.auth import Resource, Rule
from asgi_micro.auth import from_url as auth_from_url
from asgi_micro.auth.keys import KeyRing
from asgi_micro.errors import NotFound
from asgi_micro.fastapi import Account
from asgi_micro.gateway.api import GATEWAY, Rate, RateLimiter, ServiceRoutes, gateway
from asgi_micro.plugins import Parts
from asgi_micro.registry import Endpoint, Registry
from asgi_micro.registry.memory import MemoryRegistry
from asgi_micro.store import from_url as store_from_url
from example_apps.greeter.app import greeter as greeter_router
from example_apps.greeter.app import index
from example_apps.greeter.messages import HelloRequest, HelloResponse
from tests.helpers import eventually, free_port, serve
from tests.processes import ASGI_MICRO, GREETER, ROOT, Server, environment

# -- routes and rates, no sockets ---------------------------------------------------------------


def test_paths_of_the_registry_first_then_go_micros_name_rule() -> None:
    rpc = {"kind": "rpc", "method": "POST", "idempotent": "true"}
    routes = ServiceRoutes(
        "greeter",
        {
            "Greeter.Hello": Endpoint("Greeter.Hello", metadata={**rpc, "path": "/greeter/hello"}),
            "Say.GetItem": Endpoint("Say.GetItem", metadata={**rpc, "path": "/say/get_item"}),
            "GET /items/{item_id}": Endpoint(
                "GET /items/{item_id}",
                metadata={"kind": "http", "method": "GET", "path": "/items/{item_id}"},
            ),
        },
    )
    by_path = routes.route("POST", "/greeter/hello", "", "/greeter/hello")
    assert (by_path.endpoint.name, by_path.target) == ("Greeter.Hello", "/greeter/hello")
    by_name = routes.route("POST", "/hello", "", "/hello")  # /greeter/hello at the gateway
    assert (by_name.endpoint.name, by_name.target) == ("Greeter.Hello", "/greeter/hello")
    handler = routes.route("POST", "/say/getItem", "x=1", "/say/getItem")
    assert (handler.endpoint.name, handler.target) == ("Say.GetItem", "/say/get_item?x=1")
    item = routes.route("HEAD", "/items/7", "", "/items/7")
    assert (item.endpoint.name, item.method, item.idempotent) == (
        "GET /items/{item_id}",
        "HEAD",
        True,
    )
    with pytest.raises(NotFound, match=r"GET /items/\{item_id\}"):
        routes.route("GET", "/items/7/more", "", "/items/7/more")
    with pytest.raises(Exception, match="for GET, not DELETE") as refused:
        routes.route("DELETE", "/items/7", "", "/items/7")
    assert refused.value.code == 405  # type: ignore[attr-defined]


def test_rates_parse_and_buckets_refill() -> None:
    assert Rate.parse("10/s") == Rate(per_second=10.0, burst=10)
    assert Rate.parse("120/m") == Rate(per_second=2.0, burst=120)
    for bad in ("", "ten/s", "0/s", "5/week"):
        with pytest.raises(ValueError, match="a rate is"):
            Rate.parse(bad)
    limiter = RateLimiter(Rate(per_second=2.0, burst=2), max_clients=2)
    assert limiter.take("a", now=0.0) == limiter.take("a", now=0.0) == 0.0
    assert limiter.take("a", now=0.0) == pytest.approx(0.5)
    assert limiter.take("a", now=0.5) == 0.0  # one token back after half a second
    assert limiter.take("b", now=0.5) == 0.0  # another client has a bucket of its own
    assert limiter.take("c", now=10.0) == 0.0  # over max_clients: full buckets are forgotten
    assert len(limiter._buckets) <= 2


# -- in process: the greeter behind the gateway -------------------------------------------------


def greeter_app(registry: Registry, **options: Any) -> tuple[Service, FastAPI]:
    """The example greeter's endpoints and plain route, as a service on ``registry``."""
    service = Service("greeter", registry=registry, broker="memory://", **options)
    app = FastAPI(title="greeter", lifespan=service.lifespan)
    app.include_router(greeter_router)
    app.add_api_route("/", index)
    return service, app


@contextlib.asynccontextmanager
async def running(service: Service, app: FastAPI) -> AsyncIterator[str]:
    async with serve(app) as address:
        await asyncio.wait_for(service.wait_registered(), 30)
        yield address


@contextlib.asynccontextmanager
async def behind_gateway(registry: Registry, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway on a free port: a client whose base URL it is, once it knows greeter."""
    app = gateway(registry=registry, **options)
    async with (
        serve(app) as address,
        httpx.AsyncClient(base_url=f"http://{address}", trust_env=False, timeout=30) as http,
    ):
        api = app.state.gateway

        async def knows_greeter() -> bool:
            return "greeter" in api.routes

        await eventually(knows_greeter, timeout=30, interval=0.05, message="greeter is routed")
        yield http


@pytest.fixture
async def greeter_gateway() -> AsyncIterator[httpx.AsyncClient]:
    registry = MemoryRegistry()
    service, app = greeter_app(registry)
    async with running(service, app), behind_gateway(registry) as http:
        yield http


async def test_rpc_by_path_by_name_and_by_post_rpc(greeter_gateway: httpx.AsyncClient) -> None:
    http = greeter_gateway
    ada = {"name": "Ada"}
    for path in ("/greeter/greeter/hello", "/greeter/hello"):  # the registry's path; Go Micro's
        reply = await http.post(path, json=ada)
        assert reply.status_code == 200, reply.text
        assert HelloResponse.model_validate_json(reply.content).message == "Hello Ada"
    # Metadata goes on: the greeter reads ``greeting``.
    hi = await http.post("/greeter/hello", json=ada, headers={"Micro-Greeting": "Hi"})
    assert hi.json() == {"message": "Hi Ada"}
    # The server in front of the gateway dates the reply: the node's Date and Server headers
    # are not relayed beside its own.
    for name in ("date", "server", "content-length", "content-type"):
        assert len(hi.headers.get_list(name)) == 1, (name, hi.headers.raw)
    rpc = await http.post(
        "/rpc", json={"service": "greeter", "endpoint": "Greeter.Hello", "request": ada}
    )
    assert rpc.json() == {"message": "Hello Ada"}
    as_text = await http.post(
        "/rpc", json={"service": "greeter", "endpoint": "Greeter.Hello", "request": '{"name":"B"}'}
    )
    assert as_text.json() == {"message": "Hello B"}
    # Any codec the service speaks passes through untouched.
    packed = await http.post(
        "/greeter/hello",
        content=b"\x81\xa4name\xa3Ada",
        headers={"content-type": "application/msgpack", "accept": "application/msgpack"},
    )
    assert (packed.status_code, packed.headers["content-type"]) == (200, "application/msgpack")
    assert packed.content == b"\x81\xa7message\xa9Hello Ada"


async def test_a_stream_comes_through_as_it_is_sent(greeter_gateway: httpx.AsyncClient) -> None:
    request = HelloRequest(name="Ada").model_dump() | {"count": 3}
    async with greeter_gateway.stream(
        "POST", "/greeter/greetings", json=request, headers={"accept": "application/x-ndjson"}
    ) as reply:
        assert reply.status_code == 200
        lines = [orjson.loads(line) async for line in reply.aiter_lines() if line]
        assert len(reply.headers.get_list("date")) == len(reply.headers.get_list("server")) == 1
    assert [line["message"] for line in lines] == [f"Hello Ada ({n})" for n in (1, 2, 3)]
    rpc = await greeter_gateway.post(
        "/rpc",
        json={"service": "greeter", "endpoint": "Greeter.Greetings", "request": request},
    )
    assert len(rpc.text.splitlines()) == 3


async def test_a_plain_route_is_proxied_with_where_the_call_came_from() -> None:
    registry = MemoryRegistry()
    service, app = greeter_app(registry)
    seen: dict[str, str] = {}

    @app.get("/items/{item_id}")
    async def item(item_id: int, q: str = "") -> dict[str, Any]:
        return {"item": item_id, "q": q}

    @app.middleware("http")
    async def remember(request: Any, call_next: Any) -> Any:
        seen.update(request.headers)
        return await call_next(request)

    async with running(service, app), behind_gateway(registry) as http:
        index_reply = await http.get("/greeter/")
        assert index_reply.status_code == 200
        assert index_reply.json()["service"] == "greeter"
        assert seen["x-forwarded-prefix"] == "/greeter"
        assert seen["x-forwarded-for"] == "127.0.0.1"
        assert seen["micro-from-service"] == GATEWAY
        reply = await http.get("/greeter/items/7?q=yes", headers={"Connection": "keep-alive"})
        assert reply.json() == {"item": 7, "q": "yes"}
        # HEAD goes on as HEAD, answered as the service answers it (FastAPI: 405 for a GET
        # route), its head only.
        head = await http.head("/greeter/items/7")
        assert (head.status_code, head.content) == (405, b"")
        # A service's internal routes and paths it does not list stay out of reach.
        for path in ("/greeter/_micro/stats", "/greeter/items/7/../../_micro/stats"):
            hidden = await http.get(path)
            assert hidden.status_code == 404, path
        wrong_method = await http.delete("/greeter/items/7")
        assert wrong_method.status_code == 405
        assert wrong_method.json()["id"] == GATEWAY


async def test_a_websocket_endpoint_is_relayed_both_ways() -> None:
    registry = MemoryRegistry()
    service, app = greeter_app(registry)
    async with running(service, app), behind_gateway(registry) as http:
        base = f"ws://{http.base_url.host}:{http.base_url.port}"
        async with connect(f"{base}/greeter/greeter/chat") as websocket:
            for name in ("Ada", "Grace"):
                await websocket.send(orjson.dumps({"name": name}).decode())
                assert orjson.loads(await websocket.recv()) == {"message": f"Hello {name}"}
            # A service's close, with its code and reason, comes through as it is.
            await websocket.send(orjson.dumps({"name": 5}).decode())
            with pytest.raises(ConnectionClosed) as closed:
                await websocket.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4400
        assert orjson.loads(closed.value.rcvd.reason)["id"] == "greeter"
        # The subprotocol the node chose, and binary frames.
        chat = f"{base}/greeter/greeter/chat"
        async with connect(chat, subprotocols=[Subprotocol("msgpack")]) as websocket:
            assert websocket.subprotocol == "msgpack"
            await websocket.send(msgpack.packb({"name": "Linus"}))
            assert msgpack.unpackb(await websocket.recv()) == {"message": "Hello Linus"}
        # The caller leaving ends the node's side too: the node has no session left.
        async with connect(chat) as websocket:
            await websocket.send(orjson.dumps({"name": "Ada"}).decode())
            await websocket.recv()

        async def nothing_in_flight() -> bool:
            return service.stats.in_flight == 0

        await eventually(nothing_in_flight, timeout=10, interval=0.05, message="session over")
        # No such endpoint, or a plain route: refused before the handshake.
        for path in ("/greeter/nowhere", "/nobody/chat", "/greeter/"):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(f"{base}{path}"):
                    pass
            assert refused.value.response.status_code == 403


async def test_errors_pass_through_and_unknown_names_say_what_exists(
    greeter_gateway: httpx.AsyncClient,
) -> None:
    http = greeter_gateway
    invalid = await http.post("/greeter/hello", json={"name": ""})
    assert invalid.status_code == 400
    error = invalid.json()
    assert (error["id"], error["code"], error["status"]) == ("greeter", 400, "Bad Request")
    assert "name" in error["detail"]

    nobody = await http.post("/nobody/hello", json={})
    assert nobody.status_code == 404
    assert nobody.json()["id"] == GATEWAY
    assert "no service named 'nobody'" in nobody.json()["detail"]
    assert "greeter" in nobody.json()["detail"]  # the services that are there

    nothing = await http.post("/greeter/nothing/here", json={})
    assert nothing.status_code == 404
    assert "POST /greeter/hello" in nothing.json()["detail"]

    no_endpoint = await http.post("/rpc", json={"service": "greeter", "endpoint": "Greeter.No"})
    assert no_endpoint.status_code == 404
    assert "Greeter.Hello" in no_endpoint.json()["detail"]
    bad = await http.post("/rpc", content=b"[1, 2]")
    assert (bad.status_code, bad.json()["id"]) == (400, GATEWAY)


async def test_a_service_that_goes_is_no_longer_routed() -> None:
    registry = MemoryRegistry()
    service, app = greeter_app(registry)
    async with behind_gateway_of(registry) as (http, api):
        async with running(service, app):
            await eventually(lambda: _known(api), timeout=30, interval=0.05, message="routed")
            assert (await http.post("/greeter/hello", json={"name": "A"})).status_code == 200
            assert len(api._resolved) == 1  # the route is kept for the next request...
        await eventually(lambda: _gone(api), timeout=30, interval=0.05, message="unrouted")
        assert not api._resolved  # ...until the services change
        assert (await http.post("/greeter/hello", json={"name": "A"})).status_code == 404


async def _known(api: Any) -> bool:
    return "greeter" in api.routes


async def _gone(api: Any) -> bool:
    return "greeter" not in api.routes


@contextlib.asynccontextmanager
async def behind_gateway_of(
    registry: Registry, **options: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    app = gateway(registry=registry, **options)
    async with (
        serve(app) as address,
        httpx.AsyncClient(base_url=f"http://{address}", trust_env=False, timeout=30) as http,
    ):
        yield http, app.state.gateway


async def test_the_combined_openapi_lists_every_service_under_its_name() -> None:
    registry = MemoryRegistry()
    service, app = greeter_app(registry)
    other = f"bare-{uuid.uuid4().hex[:8]}"
    # No document of its own: the registry's schemas describe it.
    bare, bare_app = shouter(other, registry, openapi_url=None)
    async with running(service, app), running(bare, bare_app), behind_gateway(registry) as http:

        async def listed() -> dict[str, Any] | None:
            document = (await http.get("/openapi.json")).json()
            paths = document["paths"]
            return document if f"/{other}/shout/loud" in paths else None

        document = await eventually(listed, timeout=30, interval=0.1, message="both documented")
        assert document is not None
        paths = document["paths"]
        hello = paths["/greeter/greeter/hello"]["post"]
        assert hello["tags"] == ["greeter"]
        schema = hello["requestBody"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/greeter.HelloRequest"}
        assert "greeter.HelloRequest" in document["components"]["schemas"]
        assert "get" in paths["/greeter/"]
        assert "/rpc" in paths
        loud = paths[f"/{other}/shout/loud"]["post"]
        assert loud["tags"] == [other]
        assert loud["description"] == "Say the words louder."
        body = loud["requestBody"]["content"]["application/json"]["schema"]
        assert body["properties"]["name"]["type"] == "string"
        assert not any("/_micro/" in path for path in paths)


def shouter(
    name: str, registry: Registry, *, openapi_url: str | None = "/openapi.json"
) -> tuple[Service, FastAPI]:
    service = Service(name, registry=registry, broker="memory://")
    router = MicroRouter("Shout")

    @router.rpc()
    async def loud(req: HelloRequest) -> HelloResponse:
        """Say the words louder."""
        return HelloResponse(message=req.name.upper())

    app = FastAPI(lifespan=service.lifespan, openapi_url=openapi_url)
    app.include_router(router)
    return service, app


async def test_cors_preflight_and_simple_requests() -> None:
    registry = MemoryRegistry()
    service, app = greeter_app(registry)
    origin = "https://app.example"
    async with running(service, app), behind_gateway(registry, cors=[origin]) as http:
        preflight = await http.options(
            "/greeter/hello",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == origin
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        reply = await http.post("/greeter/hello", json={"name": "A"}, headers={"Origin": origin})
        assert reply.headers["access-control-allow-origin"] == origin
        other = await http.options(
            "/greeter/hello",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert other.status_code == 400


async def test_rate_limit_per_client_and_body_limit() -> None:
    registry = MemoryRegistry()
    service, app = greeter_app(registry)
    options: dict[str, Any] = {"rate": "3/m", "max_body": 64}
    async with running(service, app), behind_gateway(registry, **options) as http:
        base = str(http.base_url)
        for _ in range(3):  # the burst
            assert (await http.post("/greeter/hello", json={"name": "A"})).status_code == 200
        over = await http.post("/greeter/hello", json={"name": "A"})
        assert over.status_code == 429
        assert over.json()["id"] == GATEWAY
        assert over.json()["status"] == "Too Many Requests"
        assert 1 <= int(over.headers["retry-after"]) <= 20
        # Another client address has a bucket of its own.
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with httpx.AsyncClient(base_url=base, transport=transport, trust_env=False) as other:
            big = await other.post("/greeter/hello", json={"name": "x" * 100})
            assert big.status_code == 413
            assert big.json()["id"] == GATEWAY
            chunked = await other.post(
                "/greeter/hello", content=_chunks([b'{"name": "', b"x" * 100, b'"}'])
            )
            assert chunked.status_code == 413
            assert (await other.post("/greeter/hello", json={"name": "A"})).status_code == 200


async def _chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest.mark.slow
async def test_with_auth_on_the_edge_refuses_and_the_service_verifies_again(
    tmp_path: Path,
) -> None:
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    auth_url = f"jwt://?keys={tmp_path / 'keys.json'}"
    name = f"who-{uuid.uuid4().hex[:8]}"
    store = store_from_url(store_url)
    async with store, auth_from_url(auth_url, parts=Parts(service="test", store=store)) as auth:
        made = await auth.generate("ada", scopes=["user"])
        await auth.grant(Rule("users", "user", Resource("service", "greeter", "Greeter.*")))
        await auth.grant(Rule("users-who", "user", Resource("service", name, "*")))
        ada = (await auth.token(id="ada", secret=made.secret)).access_token

    registry = MemoryRegistry()
    service, app = greeter_app(registry, store=store_url, auth=auth_url)
    who = Service(name, registry=registry, broker="memory://", store=store_url, auth=auth_url)
    who_router = MicroRouter("Who")

    @who_router.rpc()
    async def am_i(req: HelloRequest, account: Account) -> HelloResponse:
        return HelloResponse(message=account.id)

    who_app = FastAPI(lifespan=who.lifespan)
    who_app.include_router(who_router)

    gateway_store = store_from_url(store_url)
    edge = auth_from_url(auth_url, parts=Parts(service=GATEWAY, store=gateway_store))
    async with (
        gateway_store,
        running(service, app),
        running(who, who_app),
        behind_gateway(registry, auth=edge, rate="100/s") as http,
    ):
        refused = await http.post("/greeter/hello", json={"name": "A"})
        assert refused.status_code == 401
        assert refused.json()["id"] == "asgi_micro.auth"
        verified: list[str] = []
        verify_claims = edge.verify_claims

        def counted(token: str, **options: Any) -> Any:
            verified.append(token)
            return verify_claims(token, **options)

        edge.verify_claims = counted  # type: ignore[method-assign]
        forged = await http.post(
            "/greeter/hello", json={"name": "A"}, headers={"Authorization": "Bearer not.a.jwt"}
        )
        assert forged.status_code == 401
        assert verified == ["not.a.jwt"]  # read once at the edge, not once per check
        good = {"Authorization": f"Bearer {ada}"}
        reply = await http.post("/greeter/hello", json={"name": "Ada"}, headers=good)
        assert reply.json() == {"message": "Hello Ada"}

        async def routed() -> bool:
            reply = await http.post(f"/{name}/who/am_i", json={"name": "x"}, headers=good)
            return reply.status_code != 404

        await eventually(routed, timeout=30, interval=0.1, message="who is routed")
        # The service's own guard verified the token the gateway passed on: it names ada.
        who_reply = await http.post(f"/{name}/who/am_i", json={"name": "x"}, headers=good)
        assert who_reply.json() == {"message": "ada"}


async def test_a_rotation_the_gateway_has_not_read_is_learnt_from_the_service(
    tmp_path: Path,
) -> None:
    # Two copies of one ring, as two hosts hold: the greeter's side rotates, the gateway's
    # copy has not been updated.
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    ring, copy = tmp_path / "keys.json", tmp_path / "gateway-keys.json"
    KeyRing(ring).load()
    shutil.copy(ring, copy)
    registry = MemoryRegistry()
    service, app = greeter_app(registry, store=store_url, auth=f"jwt://?keys={ring}")
    gateway_store = store_from_url(store_url)
    edge = auth_from_url(f"jwt://?keys={copy}", parts=Parts(service=GATEWAY, store=gateway_store))
    async with gateway_store, running(service, app):
        made = await service.auth.generate("ada", scopes=["user"])
        await service.auth.grant(Rule("users", "user", Resource("service", "greeter", "*")))
        async with behind_gateway(registry, auth=edge) as http:
            KeyRing(ring).rotate()
            assert service.auth.reload_keys()
            ada = (await service.auth.token(id="ada", secret=made.secret)).access_token
            kid = service.auth.keys.signing.kid  # type: ignore[attr-defined]
            assert edge.keys.find(kid) is None  # type: ignore[attr-defined]
            reply = await http.post(
                "/greeter/hello", json={"name": "Ada"}, headers={"Authorization": f"Bearer {ada}"}
            )
            assert reply.json() == {"message": "Hello Ada"}, reply.text
            assert edge.keys.find(kid) is not None  # type: ignore[attr-defined]
            # A token of another ring is still refused.
            stranger = auth_from_url(f"jwt://?keys={tmp_path / 'stranger.json'}")
            forged = stranger.issue(Account_("ada", scopes=("user",)), expiry=60)  # type: ignore[attr-defined]
            refused = await http.post(
                "/greeter/hello", json={"name": "A"}, headers={"Authorization": f"Bearer {forged}"}
            )
            assert refused.status_code == 401


# -- the console script in front of the greeter in its own process ------------------------------


@pytest.mark.slow
async def test_asgi_micro_api_in_front_of_the_example_greeter() -> None:
    greeter = Server(GREETER, ASGI_MICRO, ())
    port = free_port()
    process = None
    try:
        await greeter.start()
        await greeter.ready()
        process = await asyncio.create_subprocess_exec(
            *ASGI_MICRO, "api", "--port", str(port), "--cors-origin", "https://app.example",
            "--rate", "50/s",
            cwd=ROOT, env=environment(), stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=30
        ) as http:

            async def greets() -> dict[str, Any] | None:
                assert process is not None
                assert process.returncode is None, "the gateway exited"
                try:
                    reply = await http.post("/greeter/hello", json={"name": "Ada"})
                except httpx.TransportError:
                    return None
                return reply.json() if reply.status_code == 200 else None

            assert await eventually(greets, timeout=60, interval=0.2) == {"message": "Hello Ada"}
            document = (await http.get("/openapi.json")).json()
            assert "/greeter/greeter/hello" in document["paths"]
            preflight = await http.options(
                "/greeter/hello",
                headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
            )
            assert preflight.status_code == 200
    finally:
        if process is not None and process.returncode is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        await greeter.close()


async def test_mounted_in_an_app_of_ones_own_it_starts_on_the_first_request() -> None:
    registry = MemoryRegistry()
    service, app = greeter_app(registry)
    host = FastAPI()
    api = gateway(registry=registry)
    host.mount("/api", api)
    async with (
        running(service, app),
        serve(host) as address,
        httpx.AsyncClient(base_url=f"http://{address}", trust_env=False, timeout=30) as http,
    ):

        async def greets() -> bool:
            reply = await http.post("/api/greeter/hello", json={"name": "Ada"})
            return reply.status_code == 200 and reply.json() == {"message": "Hello Ada"}

        await eventually(greets, timeout=30, interval=0.05, message="greeter behind the mount")
        document = (await http.get("/api/openapi.json")).json()
        assert document["servers"] == [{"url": "/api"}]
        assert "/greeter/greeter/hello" in document["paths"]
        await api.state.gateway.stop()
