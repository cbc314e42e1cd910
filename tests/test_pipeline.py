"""One pipeline for every protocol: a wrapper registered once sees every call, over HTTP
(JSON, protobuf, msgpack, NDJSON, SSE, the FastAPI path, plain routes), WebSocket and gRPC
(unary and the three kinds of stream), and its refusal reads the same on each; a drain waits
for calls in flight on every protocol; client wrappers see every outgoing call."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import msgpack
import orjson
import pytest
from fastapi import FastAPI, Request, WebSocket
from pydantic import BaseModel
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from asgi_micro import MicroRouter, Service, errors
from asgi_micro.client import ClientCall, ClientNext
from asgi_micro.client.grpc import GrpcTransport
from asgi_micro.codec import PROTOBUF
from asgi_micro.context import Context
from asgi_micro.grpc.status import error_from_status
from asgi_micro.pipeline import Call, Gate, Next, Pipeline
from asgi_micro.registry.memory import MemoryRegistry
from tests.helpers import free_port, serve


class Echo(BaseModel):
    text: str


class Count(BaseModel):
    count: int


@dataclass
class Seen:
    """What the recording wrapper saw, one entry per call."""

    calls: list[tuple[str, str, str]] = field(default_factory=list)  # endpoint, protocol, kind
    requests: list[Any] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)
    errors: list[int] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)
    refuse: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)
    entered: asyncio.Event = field(default_factory=asyncio.Event)


def router(seen: Seen) -> MicroRouter:
    lab = MicroRouter("Lab")

    @lab.rpc()
    async def hello(req: Echo) -> Echo:
        return Echo(text=f"hello {req.text}")

    @lab.rpc()
    async def ticks(req: Echo) -> AsyncIterator[Echo]:
        for number in range(3):
            yield Echo(text=f"{req.text} {number}")

    @lab.rpc()
    async def count(requests: AsyncIterator[Echo]) -> Count:
        return Count(count=len([request async for request in requests]))

    @lab.rpc()
    async def echoes(requests: AsyncIterator[Echo]) -> AsyncIterator[Echo]:
        async for request in requests:
            yield Echo(text=request.text)

    @lab.rpc()
    async def hold(requests: AsyncIterator[Echo]) -> AsyncIterator[Echo]:
        seen.entered.set()
        async for request in requests:
            await seen.release.wait()
            yield Echo(text=request.text)

    @lab.rpc()
    async def raw(req: Echo, request: Request) -> Echo:
        """Served by FastAPI (it takes the Request)."""
        return Echo(text=f"raw {req.text} {request.method}")

    return lab


def add_plain_routes(app: FastAPI) -> None:
    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        if item_id == 0:
            raise errors.NotFound("no item 0")
        return {"id": item_id}


@dataclass
class Lab:
    service: Service
    http: str
    seen: Seen

    @property
    def grpc(self) -> str:
        assert self.service.grpc_server is not None
        address = self.service.grpc_server.address
        assert address is not None
        return address


class Doorman(Gate):
    """A gate recording whom it let in, refusing when told to or when it takes I/O to decide
    (``micro-ask`` metadata) and the answer is no."""

    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    def admit(self, context: Context, endpoint: str, protocol: str) -> Any:
        if "ask" in context.metadata:
            return self.ask(context, endpoint, protocol)
        self.decide(context, endpoint, protocol)
        return None

    def decide(self, context: Context, endpoint: str, protocol: str) -> None:
        self.seen.calls.append((endpoint, protocol, ""))
        self.seen.metadata.append(dict(context.metadata))
        if self.seen.refuse:
            raise errors.Forbidden(f"{endpoint} refused", id="lab-guard")

    async def ask(self, context: Context, endpoint: str, protocol: str) -> None:
        await asyncio.sleep(0)
        self.decide(context, endpoint, protocol)


@contextlib.asynccontextmanager
async def lab_app(*, lifespan: bool, gate: bool = False) -> AsyncIterator[Lab]:
    seen = Seen()
    port = free_port()
    service = Service(
        "lab", registry=MemoryRegistry(), address=f"127.0.0.1:{port}", drain_grace=0.0
    )
    if gate:
        service.wrap(Doorman(seen))

    @service.wrap
    async def record(call: Call, next: Next) -> Any:
        if gate:
            return await next(call)
        seen.calls.append((call.endpoint, call.protocol, call.kind))
        seen.requests.append(call.request)
        seen.metadata.append(dict(call.metadata))
        if seen.refuse:
            raise errors.Forbidden(f"{call.endpoint} refused", id="lab-guard")
        try:
            result = await next(call)
        except errors.MicroError as exc:
            seen.errors.append(exc.code)
            raise
        seen.results.append(result)
        return result

    if lifespan:
        app = FastAPI(lifespan=service.lifespan)
    else:
        from asgi_micro import MicroMiddleware

        app = FastAPI()
        app.add_middleware(MicroMiddleware, service=service)
    app.include_router(router(seen))
    add_plain_routes(app)
    async with serve(app, port=port) as address:
        await service.wait_registered()
        yield Lab(service, address, seen)


@pytest.fixture(params=["lifespan", "middleware"])
async def lab(request: pytest.FixtureRequest) -> AsyncIterator[Lab]:
    async with lab_app(lifespan=request.param == "lifespan") as lab:
        yield lab


@pytest.fixture
async def http(lab: Lab) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://{lab.http}", trust_env=False) as client:
        yield client


async def over_every_protocol(lab: Lab, http: httpx.AsyncClient) -> dict[str, Any]:
    """Call the lab once over each protocol: what each answered (an exception when it
    refused)."""
    answers: dict[str, Any] = {}

    async def attempt(name: str, call: Any) -> None:
        try:
            answers[name] = await call
        except Exception as exc:
            answers[name] = exc

    async def json_unary() -> Any:
        return await http.post("/lab/hello", json={"text": "json"}, headers={"micro-who": "j"})

    async def protobuf_unary() -> Any:
        body = PROTOBUF.encode(Echo(text="protobuf"))
        return await http.post(
            "/lab/hello",
            content=body,
            headers={"content-type": "application/protobuf", "accept": "application/json"},
        )

    async def msgpack_unary() -> Any:
        return await http.post(
            "/lab/hello",
            content=msgpack.packb({"text": "msgpack"}),
            headers={"content-type": "application/msgpack", "accept": "application/json"},
        )

    async def stream(accept: str) -> Any:
        return await http.post("/lab/ticks", json={"text": accept}, headers={"accept": accept})

    async def fastapi_path() -> Any:
        return await http.post("/lab/raw", json={"text": "fastapi"})

    async def plain_route() -> Any:
        return await http.get("/items/7")

    async def websocket() -> Any:
        async with connect(f"ws://{lab.http}/lab/echoes") as socket:
            await socket.send(orjson.dumps({"text": "ws"}).decode())
            reply = await socket.recv()
            await socket.send("")
            return reply

    async def grpc_call(kind: str) -> Any:
        async with GrpcTransport() as transport:
            if kind == "unary":
                return await transport.unary(
                    lab.grpc, "/lab.Lab/Hello", Echo(text="grpc"), response_model=Echo
                )
            if kind == "server":
                return [
                    reply
                    async for reply in transport.server_stream(
                        lab.grpc, "/lab.Lab/Ticks", Echo(text="grpc"), response_model=Echo
                    )
                ]
            if kind == "client":
                return await transport.client_stream(
                    lab.grpc,
                    "/lab.Lab/Count",
                    [Echo(text="a"), Echo(text="b")],
                    response_model=Count,
                )
            return [
                reply
                async for reply in transport.bidi_stream(
                    lab.grpc, "/lab.Lab/Echoes", [Echo(text="bidi")], response_model=Echo
                )
            ]

    await attempt("http json", json_unary())
    await attempt("http protobuf", protobuf_unary())
    await attempt("http msgpack", msgpack_unary())
    await attempt("ndjson", stream("application/x-ndjson"))
    await attempt("sse", stream("text/event-stream"))
    await attempt("fastapi path", fastapi_path())
    await attempt("plain route", plain_route())
    await attempt("websocket", websocket())
    for kind in ("unary", "server", "client", "bidi"):
        await attempt(f"grpc {kind}", grpc_call(kind))
    return answers


EXPECTED_CALLS = [
    ("Lab.Hello", "http", "unary"),
    ("Lab.Hello", "http", "unary"),
    ("Lab.Hello", "http", "unary"),
    ("Lab.Ticks", "http", "server"),
    ("Lab.Ticks", "http", "server"),
    ("Lab.Raw", "http", "unary"),
    ("GET /items/{item_id}", "http", "unary"),
    ("Lab.Echoes", "websocket", "bidi"),
    ("Lab.Hello", "grpc", "unary"),
    ("Lab.Ticks", "grpc", "server"),
    ("Lab.Count", "grpc", "client"),
    ("Lab.Echoes", "grpc", "bidi"),
]


async def test_one_wrapper_sees_every_call_on_every_protocol(
    lab: Lab, http: httpx.AsyncClient
) -> None:
    answers = await over_every_protocol(lab, http)
    failed = {name: answer for name, answer in answers.items() if isinstance(answer, Exception)}
    assert failed == {}
    for name in ("http json", "http protobuf", "http msgpack", "fastapi path", "plain route"):
        assert answers[name].status_code == 200, (name, answers[name].text)
    assert lab.seen.calls == EXPECTED_CALLS
    # The decoded request, whatever the codec; a plain route's parameters are FastAPI's.
    requests = lab.seen.requests
    assert requests[:3] == [Echo(text="json"), Echo(text="protobuf"), Echo(text="msgpack")]
    assert requests[5] == Echo(text="fastapi")
    assert requests[6] is None
    assert requests[8] == Echo(text="grpc")
    # The handler's reply as the result; None once a stream has been written.
    results = lab.seen.results
    assert results[:3] == [Echo(text=f"hello {text}") for text in ("json", "protobuf", "msgpack")]
    assert results[3:5] == [None, None]
    assert results[5] == Echo(text="raw fastapi POST")
    assert results[8] == Echo(text="hello grpc")
    assert results[10] == Count(count=2)
    assert lab.seen.metadata[0] == {"who": "j"}
    # Every protocol counted in flight, and back to none.
    assert lab.service.stats.requests >= len(EXPECTED_CALLS)
    assert lab.service.stats.in_flight == 0


async def test_a_wrapper_refusal_reads_the_same_on_every_protocol(
    lab: Lab, http: httpx.AsyncClient
) -> None:
    lab.seen.refuse = True
    answers = await over_every_protocol(lab, http)
    expected = {"id": "lab-guard", "code": 403, "status": "Forbidden"}
    for name in ("http json", "http protobuf", "http msgpack", "ndjson", "sse", "fastapi path"):
        response = answers[name]
        assert response.status_code == 403, name
        error = response.json()
        assert {key: error[key] for key in expected} == expected, name
        assert error["detail"].endswith(" refused")
    assert answers["plain route"].status_code == 403
    assert answers["plain route"].json()["detail"] == "GET /items/{item_id} refused"
    # A WebSocket closes with 4000 + the status and the error as its reason.
    closed = answers["websocket"]
    assert isinstance(closed, ConnectionClosed)
    assert closed.rcvd is not None
    assert closed.rcvd.code == 4403
    assert orjson.loads(closed.rcvd.reason)["id"] == "lab-guard"
    # gRPC: PERMISSION_DENIED, with the same error in the trailing metadata.
    for kind in ("unary", "server", "client", "bidi"):
        error = answers[f"grpc {kind}"]
        assert isinstance(error, errors.Forbidden), (kind, error)
        assert (error.id, error.code) == ("lab-guard", 403)
    assert len(lab.seen.calls) == len(EXPECTED_CALLS)
    # Refusals are the caller's fault: no server errors counted.
    assert lab.service.stats.errors == 0


async def test_a_plain_route_error_reaches_the_wrapper_and_the_caller(
    lab: Lab, http: httpx.AsyncClient
) -> None:
    """``errors.NotFound`` from a plain route is a 404 in Go Micro's shape, in either way of
    adopting the framework (it was a 500 under ``FastAPI(lifespan=...)``); the wrapper sees it
    raised."""
    response = await http.get("/items/0")
    assert response.status_code == 404
    assert response.json() == {
        "id": "lab",
        "code": 404,
        "detail": "no item 0",
        "status": "Not Found",
    }
    assert lab.seen.errors == [404]
    # A route that does not exist reaches no endpoint: no wrapper runs.
    assert (await http.get("/nowhere")).status_code == 404
    assert lab.seen.calls == [("GET /items/{item_id}", "http", "unary")]


async def test_a_drain_waits_for_an_open_websocket_call() -> None:
    async with lab_app(lifespan=True) as lab:
        async with connect(f"ws://{lab.http}/lab/hold") as socket:
            await socket.send(orjson.dumps({"text": "wait"}).decode())
            await lab.seen.entered.wait()
            assert lab.service.stats.in_flight == 1
            draining = asyncio.create_task(lab.service.drain())
            await asyncio.sleep(0.3)
            assert not draining.done()  # the call is still open
            assert lab.service.status == "draining"
            lab.seen.release.set()
            assert orjson.loads(await socket.recv()) == {"text": "wait"}
            await socket.send("")
            with contextlib.suppress(ConnectionClosed):
                await socket.recv()
        await asyncio.wait_for(draining, 5)
        assert lab.service.stats.in_flight == 0


async def test_a_drain_waits_for_a_grpc_stream() -> None:
    async with lab_app(lifespan=True) as lab, GrpcTransport() as transport:
        release = asyncio.Event()

        async def requests() -> AsyncIterator[Echo]:
            yield Echo(text="one")
            await release.wait()

        replies = transport.bidi_stream(
            lab.grpc, "/lab.Lab/Echoes", requests(), response_model=Echo
        )
        assert await anext(replies) == Echo(text="one")
        draining = asyncio.create_task(lab.service.drain())
        await asyncio.sleep(0.3)
        assert not draining.done()
        release.set()
        assert [reply async for reply in replies] == []
        await asyncio.wait_for(draining, 5)


@pytest.mark.parametrize("ask", [False, True], ids=["at once", "after I/O"])
async def test_a_gate_admits_and_refuses_on_every_protocol(ask: bool) -> None:
    """A ``Gate`` is a wrapper that decides from the context alone: it sees every call by the
    same names, and its refusal reads as a wrapper's does on every protocol."""
    async with (
        lab_app(lifespan=True, gate=True) as lab,
        httpx.AsyncClient(base_url=f"http://{lab.http}", trust_env=False) as http,
    ):
        headers = {"micro-ask": "1"} if ask else {}
        http.headers.update(headers)
        answers = await over_every_protocol(lab, http)
        failed = {name: answer for name, answer in answers.items() if isinstance(answer, Exception)}
        assert failed == {}
        assert [(endpoint, protocol) for endpoint, protocol, _ in lab.seen.calls[:8]] == [
            (endpoint, protocol) for endpoint, protocol, _ in EXPECTED_CALLS[:8]
        ]
        lab.seen.refuse = True
        reply = await http.post("/lab/hello", json={"text": "no"})
        assert reply.status_code == 403
        assert reply.json()["id"] == "lab-guard"
        async with GrpcTransport() as transport:
            with pytest.raises(errors.Forbidden, match=r"Lab\.Hello refused"):
                await transport.unary(
                    lab.grpc,
                    "/lab.Lab/Hello",
                    Echo(text="no"),
                    response_model=Echo,
                    metadata=tuple(headers.items()),
                )
        assert lab.service.stats.errors == 0


def test_gates_keep_the_fast_path_and_other_wrappers_do_not() -> None:
    hello = router(Seen()).rpcs["Hello"]
    pipeline = Pipeline()
    assert pipeline.direct(hello) is not None
    pipeline.wrap(Doorman(Seen()))
    assert pipeline.gated
    assert pipeline.direct(hello) is not None

    async def plain(call: Call, next: Next) -> Any:
        return await next(call)

    pipeline.wrap(plain)
    assert pipeline.direct(hello) is None


async def test_a_gate_on_the_fast_path_runs_before_the_handler() -> None:
    seen = Seen()
    hello = router(seen).rpcs["Hello"]
    pipeline = Pipeline()
    pipeline.wrap(Doorman(seen))
    direct = pipeline.direct(hello, "grpc")
    assert direct is not None
    assert await direct(Echo(text="in"), Context({"who": "me"})) == Echo(text="hello in")
    assert await direct(Echo(text="later"), Context({"ask": "1"})) == Echo(text="hello later")
    assert seen.calls == [("Lab.Hello", "grpc", "")] * 2
    assert seen.metadata == [{"who": "me"}, {"ask": "1"}]
    seen.refuse = True
    with pytest.raises(errors.Forbidden):
        await direct(Echo(text="out"), Context())


def test_wrappers_are_async_and_added_before_serving() -> None:
    pipeline = Pipeline()

    def blocking(call: Call, next: Next) -> Any:
        return next(call)

    with pytest.raises(TypeError, match="must be async"):
        pipeline.wrap(blocking)  # type: ignore[arg-type]
    pipeline.frozen = True

    async def late(call: Call, next: Next) -> Any:
        return await next(call)

    with pytest.raises(RuntimeError, match="before the service starts"):
        pipeline.wrap(late)


async def test_wrappers_run_in_the_order_added_and_may_answer_themselves() -> None:
    order: list[str] = []
    service = Service("ordered", registry=MemoryRegistry(), address="127.0.0.1:1", grpc=False)

    @service.wrap
    async def outer(call: Call, next: Next) -> Any:
        order.append("outer in")
        try:
            return await next(call)
        finally:
            order.append("outer out")

    @service.wrap
    async def cache(call: Call, next: Next) -> Any:
        order.append("cache")
        if call.request.text == "cached":
            return Echo(text="from the cache")
        return await next(call)

    app = FastAPI(lifespan=service.lifespan)
    app.include_router(router(Seen()))
    add_plain_routes(app)
    async with (
        serve(app) as address,
        httpx.AsyncClient(base_url=f"http://{address}", trust_env=False) as http,
    ):
        cached = await http.post("/lab/hello", json={"text": "cached"})
        fresh = await http.post("/lab/hello", json={"text": "fresh"})
        raw = await http.post("/lab/raw", json={"text": "cached"})
    assert cached.json() == {"text": "from the cache"}
    assert fresh.json() == {"text": "hello fresh"}
    assert raw.json() == {"text": "from the cache"}  # on the FastAPI path too
    assert order[:4] == ["outer in", "cache", "outer out", "outer in"]


async def test_client_wrappers_see_every_outgoing_call() -> None:
    """One client wrapper: ``call`` over HTTP and gRPC, ``stream`` and ``http()``, each once
    whatever the retries, with metadata it adds on the wire."""
    async with lab_app(lifespan=True) as lab:
        seen: list[tuple[str, str, str, str]] = []
        caller = Service("caller", registry=lab.service.registry)

        @caller.client.wrap
        async def tag(call: ClientCall, next: ClientNext) -> Any:
            seen.append((call.service, call.endpoint, call.protocol, call.kind))
            call.context.metadata["tagged"] = "yes"
            return await next(call)

        async with caller:
            client = caller.client
            reply = await client.call("lab", "Lab.Hello", {"text": "a"}, response_model=Echo)
            over_grpc = await client.call(
                "lab", "Lab.Hello", {"text": "b"}, response_model=Echo, transport="grpc"
            )
            ticks = [r async for r in client.stream("lab", "Lab.Ticks", {"text": "c"})]
            async with caller.http() as http:
                item = (await http.get("http://lab/items/3")).json()
    assert reply == Echo(text="hello a")
    assert over_grpc == Echo(text="hello b")
    assert len(ticks) == 3
    assert item == {"id": 3}
    assert seen == [
        ("lab", "Lab.Hello", "http", "unary"),
        ("lab", "Lab.Hello", "grpc", "unary"),
        ("lab", "Lab.Ticks", "http", "server"),
        ("lab", "GET /items/3", "http", "http"),
    ]
    assert [m.get("tagged") for m in lab.seen.metadata] == ["yes"] * 4


async def test_a_client_wrapper_short_circuits() -> None:
    caller = Service("caller", registry=MemoryRegistry())

    @caller.client.wrap
    async def limit(call: ClientCall, next: ClientNext) -> Any:
        raise errors.TooManyRequests("slow down", id="caller-limits")

    async with caller:
        with pytest.raises(errors.TooManyRequests, match="slow down"):
            await caller.client.call("anyone", "Any.Thing", {})


def test_grpc_refusals_map_to_permission_denied() -> None:
    error = error_from_status(grpc.StatusCode.PERMISSION_DENIED, "no", None)
    assert isinstance(error, errors.Forbidden)


async def test_a_refused_plain_websocket_route_is_refused_at_the_handshake() -> None:
    service = Service("ws", registry=MemoryRegistry(), grpc=False)

    @service.wrap
    async def refuse(call: Call, next: Next) -> Any:
        if call.protocol == "websocket":
            raise errors.Forbidden("no sockets")
        return await next(call)

    app = FastAPI(lifespan=service.lifespan)

    @app.websocket("/socket")
    async def socket(websocket: Any) -> None:
        await websocket.accept()
        await websocket.send_text("in")
        await websocket.close()

    async with serve(app) as address:
        with pytest.raises(InvalidStatus):
            async with connect(f"ws://{address}/socket"):
                pass


async def test_plain_routes_behind_a_gate_are_admitted_refused_and_observed_without_a_call() -> (
    None
):
    """Nothing but a gate and an observer (auth and metrics, the usual pair): a plain route
    keeps its fast path (the observer gets no ``Call``), the gate sees it by its endpoint name,
    and a refusal reads as a wrapper's does: 403 in Go Micro's shape over HTTP, a refused
    handshake over WebSocket; the observer is told of both."""
    seen = Seen()
    observed: list[tuple[bool, str, str, str | None]] = []
    service = Service("plain", registry=MemoryRegistry(), grpc=False, address="127.0.0.1:1")
    service.wrap(Doorman(seen))
    service.pipeline.observe(
        lambda call, protocol, endpoint, seconds, error: observed.append(
            (call is None, protocol, endpoint, type(error).__name__ if error else None)
        )
    )
    app = FastAPI(lifespan=service.lifespan)

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    @app.websocket("/socket")
    async def socket(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("in")
        await websocket.close()

    async with serve(app) as address, httpx.AsyncClient(base_url=f"http://{address}") as http:
        assert (await http.get("/items/7")).json() == {"item_id": 7}
        assert (await http.get("/items/x")).status_code == 400  # FastAPI's 422, in Go Micro's shape
        async with connect(f"ws://{address}/socket") as websocket:
            assert await websocket.recv() == "in"
        seen.refuse = True
        refused = await http.get("/items/8")
        assert refused.status_code == 403
        assert refused.json()["id"] == "lab-guard"
        assert refused.json()["detail"] == "GET /items/{item_id} refused"
        with pytest.raises(InvalidStatus):
            async with connect(f"ws://{address}/socket"):
                pass
    assert [call[:2] for call in seen.calls] == [
        ("GET /items/{item_id}", "http"),
        ("GET /items/{item_id}", "http"),
        ("WEBSOCKET /socket", "websocket"),
        ("GET /items/{item_id}", "http"),
        ("WEBSOCKET /socket", "websocket"),
    ]
    assert observed == [
        (True, "http", "GET /items/{item_id}", None),
        (True, "http", "GET /items/{item_id}", "BadRequest"),
        (True, "websocket", "WEBSOCKET /socket", None),
        (True, "http", "GET /items/{item_id}", "Forbidden"),
        (True, "websocket", "WEBSOCKET /socket", "Forbidden"),
    ]


def test_a_plain_route_s_names_are_remembered_within_a_bound() -> None:
    """The endpoint name of a plain route is worked out once per method (and router context),
    and a client making up methods cannot grow what is remembered past its bound."""
    from starlette.routing import Route

    from asgi_micro.routes import _NAMES, _named

    route = Route("/items/{item_id}", lambda request: None, methods=["GET"])
    names: dict[tuple[Any, ...], tuple[Any, str]] = {}

    def scope(method: str) -> dict[str, Any]:
        return {"type": "http", "method": method, "path": "/items/1"}

    assert _named(route, scope("HEAD"), names) == "GET /items/{item_id}"
    assert _named(route, scope("GET"), names) == "GET /items/{item_id}"
    made_up = [f"M{number}" for number in range(2 * _NAMES)]
    assert [_named(route, scope(method), names) for method in made_up] == [
        f"{method} /items/{{item_id}}" for method in made_up
    ]
    assert len(names) == _NAMES
    assert _named(route, scope("HEAD"), names) == "GET /items/{item_id}"
