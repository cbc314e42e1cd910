"""Tracing: one trace across services over HTTP, gRPC and an event, collected by the SDK's
in-memory exporter; the caller's ``traceparent`` as the parent; errors on spans; span ids in
log records; off unless configured, and an SDK provider of the service's own from ``OTEL_*``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

import grpc
import httpx
import pytest
from fastapi import FastAPI, Request, Response
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import BaseModel

from asgi_micro import MicroRouter, Service, errors
from asgi_micro.codec import message_type
from asgi_micro.protobuf import message_converter
from asgi_micro.registry import Registry
from asgi_micro.registry.memory import MemoryRegistry
from asgi_micro.tracing import wanted
from tests.helpers import free_port, serve, until

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


class Name(BaseModel):
    name: str


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def provider(exporter: InMemorySpanExporter, service: str) -> TracerProvider:
    """A tracer provider of the test's own (not the global one), spans exported as they end."""
    tracer_provider = TracerProvider(resource=Resource.create({"service.name": service}))
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracer_provider


def traced(
    name: str, exporter: InMemorySpanExporter, registry: Registry, **options: Any
) -> Service:
    return Service(
        name,
        registry=registry,
        store="memory://",
        drain_grace=0.0,
        drain_timeout=5.0,
        tracing=provider(exporter, name),
        **options,
    )


@contextlib.asynccontextmanager
async def serving(app: FastAPI, service: Service) -> AsyncIterator[str]:
    """Serve ``app`` on uvicorn in this loop until the service is registered."""
    port = free_port()
    service.address = f"127.0.0.1:{port}"
    async with serve(app, port=port) as address:
        await service.wait_registered()
        yield address


def one(spans: list[ReadableSpan], name: str, service: str) -> ReadableSpan:
    [span] = [
        span
        for span in spans
        if span.name == name and span.resource.attributes["service.name"] == service
    ]
    return span


def parent_of(child: ReadableSpan) -> int:
    assert child.parent is not None, f"{child.name} has no parent"
    return child.parent.span_id


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.trace_id)


async def test_one_trace_across_http_grpc_and_an_event(exporter: InMemorySpanExporter) -> None:
    unique = uuid.uuid4().hex[:8]
    topic = f"user.greeted.{unique}"
    registry = MemoryRegistry()
    broker = f"memory://{unique}"
    names = traced(f"names-{unique}", exporter, registry, broker=broker)
    greeter = traced(f"greeter-{unique}", exporter, registry, broker=broker)
    frontend = traced(f"frontend-{unique}", exporter, registry, broker=broker)
    events: list[str] = []

    names_router = MicroRouter("Names")

    @names_router.rpc()
    async def lookup(req: Name) -> Name:
        return Name(name=req.name.title())

    @names.subscribe(topic, queue="names")
    async def on_greeted(user: Name) -> None:
        events.append(user.name)

    greeter_router = MicroRouter("Greeter")

    @greeter_router.rpc()
    async def hello(req: Name) -> Name:
        found = await greeter.client.call(
            names.name, "Names.Lookup", req, response_model=Name, transport="grpc"
        )
        await greeter.publish(topic, found)
        return Name(name=f"Hello {found.name}")

    frontend_app = FastAPI(lifespan=frontend.lifespan)

    @frontend_app.get("/welcome/{name}")
    async def welcome(name: str) -> dict[str, str]:
        reply = await frontend.client.call(
            greeter.name, "Greeter.Hello", {"name": name}, response_model=Name
        )
        return {"message": reply.name}

    names_app = FastAPI(lifespan=names.lifespan)
    names_app.include_router(names_router)
    greeter_app = FastAPI(lifespan=greeter.lifespan)
    greeter_app.include_router(greeter_router)
    async with (
        serving(names_app, names),
        serving(greeter_app, greeter),
        serving(frontend_app, frontend) as address,
        httpx.AsyncClient(base_url=f"http://{address}", trust_env=False) as http,
    ):
        response = await http.get("/welcome/ada")
        assert response.json() == {"message": "Hello Ada"}
        await until(lambda: events, "the event")
        await until(lambda: len(exporter.get_finished_spans()) >= 7, "the consumer's span")

    spans = list(exporter.get_finished_spans())
    assert len(spans) == 7, [span.name for span in spans]
    edge = one(spans, "GET /welcome/{name}", frontend.name)
    calls_greeter = one(spans, "Greeter/Hello", frontend.name)
    at_greeter = one(spans, "Greeter/Hello", greeter.name)
    calls_names = one(spans, "Names/Lookup", greeter.name)
    at_names = one(spans, "Names/Lookup", names.name)
    publish = one(spans, f"publish {topic}", greeter.name)
    process = one(spans, f"process {topic}", names.name)

    assert {trace_id(span) for span in spans} == {trace_id(edge)}
    assert edge.parent is None  # the request carried no trace: it starts one
    assert parent_of(calls_greeter) == span_id(edge)
    assert parent_of(at_greeter) == span_id(calls_greeter)
    assert parent_of(calls_names) == span_id(at_greeter)
    assert parent_of(at_names) == span_id(calls_names)
    assert parent_of(publish) == span_id(at_greeter)
    assert parent_of(process) == span_id(publish)
    for remote in (at_greeter, at_names, process):
        assert remote.parent is not None
        assert remote.parent.is_remote

    kinds = {
        edge: SpanKind.SERVER,
        calls_greeter: SpanKind.CLIENT,
        at_greeter: SpanKind.SERVER,
        calls_names: SpanKind.CLIENT,
        at_names: SpanKind.SERVER,
        publish: SpanKind.PRODUCER,
        process: SpanKind.CONSUMER,
    }
    for span, kind in kinds.items():
        assert span.kind == kind, span.name
        assert span.status.status_code == StatusCode.UNSET, span.name

    assert dict(edge.attributes or {}) == {
        "http.route": "/welcome/{name}",
        "http.request.method": "GET",
    }
    assert dict(at_greeter.attributes or {}) == {
        "rpc.system": "http",
        "rpc.service": "Greeter",
        "rpc.method": "Hello",
    }
    assert dict(calls_greeter.attributes or {}) == {
        "rpc.system": "http",
        "rpc.service": "Greeter",
        "rpc.method": "Hello",
        "server.address": greeter.name,
    }
    assert dict(at_names.attributes or {}) == {
        "rpc.system": "grpc",
        "rpc.service": "Names",
        "rpc.method": "Lookup",
        "rpc.grpc.status_code": 0,
    }
    assert (calls_names.attributes or {})["rpc.grpc.status_code"] == 0
    publish_attributes = dict(publish.attributes or {})
    event_id = publish_attributes.pop("messaging.message.id")
    assert publish_attributes == {
        "messaging.system": "memory",
        "messaging.destination.name": topic,
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
    }
    assert dict(process.attributes or {}) == {
        "messaging.system": "memory",
        "messaging.destination.name": topic,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.message.id": event_id,
    }
    # Each span ends inside its parent's (the event is processed after its publish returned).
    for child, parent in (
        (calls_greeter, edge),
        (at_greeter, calls_greeter),
        (calls_names, at_greeter),
        (at_names, calls_names),
        (publish, at_greeter),
    ):
        assert parent.start_time is not None
        assert child.start_time is not None
        assert parent.end_time is not None
        assert child.end_time is not None
        assert parent.start_time <= child.start_time <= child.end_time <= parent.end_time


# -- the caller's trace, errors, logs -----------------------------------------------------------


class Probe(BaseModel):
    text: str = ""


class Ids(BaseModel):
    trace_id: str
    span_id: str


class Records(logging.Handler):
    """Keeps the records it handles."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
async def lab(exporter: InMemorySpanExporter) -> AsyncIterator[Service]:
    """A traced service whose ``Lab.Fail`` fails as its request says and whose ``Lab.Log``
    logs and answers the ids the log record carried."""
    service = traced(f"lab-{uuid.uuid4().hex[:8]}", exporter, MemoryRegistry())
    router = MicroRouter("Lab")
    logger = logging.getLogger("tests.test_tracing.lab")

    @router.rpc()
    async def fail(req: Probe) -> Probe:
        if req.text == "forbidden":
            raise errors.Forbidden("no entry", id="doorman")
        raise RuntimeError("secret internals")

    @router.rpc()
    async def ticks(req: Probe) -> AsyncIterator[Probe]:
        for number in range(3):
            await asyncio.sleep(0.01)
            yield Probe(text=str(number))

    @router.rpc()
    async def log(req: Probe) -> Ids:
        handler = Records()
        logger.addHandler(handler)
        try:
            logger.warning("handling %s", req.text)
        finally:
            logger.removeHandler(handler)
        [record] = handler.records
        return Ids(trace_id=record.trace_id, span_id=record.span_id)  # type: ignore[attr-defined]

    app = FastAPI(lifespan=service.lifespan)
    app.include_router(router)
    async with serving(app, service):
        yield service


def server_spans(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [
        span
        for span in exporter.get_finished_spans()
        if span.name == name and span.kind == SpanKind.SERVER
    ]


async def test_the_callers_traceparent_is_the_parent_over_http_and_grpc(
    lab: Service, exporter: InMemorySpanExporter
) -> None:
    assert lab.node is not None
    assert lab.grpc_server is not None
    async with httpx.AsyncClient(base_url=f"http://{lab.node.address}", trust_env=False) as http:
        response = await http.post("/lab/log", json={}, headers={"traceparent": TRACEPARENT})
    assert response.status_code == 200
    converter = message_converter(message_type(Probe))
    async with grpc.aio.insecure_channel(lab.grpc_server.address) as channel:
        method = channel.unary_unary("/" + lab.grpc_server.package + ".Lab/Log")
        await method(converter.encode(Probe()), metadata=[("traceparent", TRACEPARENT)], timeout=5)
    spans = server_spans(exporter, "Lab/Log")
    assert [(span.attributes or {})["rpc.system"] for span in spans] == ["http", "grpc"]
    for span in spans:
        assert span.parent is not None
        assert span.parent.is_remote
        assert format(span.parent.span_id, "016x") == PARENT_ID
        assert format(trace_id(span), "032x") == TRACE_ID
    # The handler's log record carried the server span's ids.
    assert response.json() == {
        "trace_id": TRACE_ID,
        "span_id": format(span_id(spans[0]), "016x"),
    }


async def test_log_records_outside_a_span_carry_empty_ids(lab: Service) -> None:
    record = logging.getLogger("tests.test_tracing").makeRecord(
        "tests", logging.INFO, __file__, 1, "outside %s", ("a span",), None
    )
    assert record.trace_id == record.span_id == ""  # type: ignore[attr-defined]
    format = logging.Formatter("[%(trace_id)s/%(span_id)s] %(message)s")
    assert format.format(record) == "[/] outside a span"


async def test_errors_mark_the_spans_with_their_codes(
    lab: Service, exporter: InMemorySpanExporter
) -> None:
    caller = traced(f"caller-{uuid.uuid4().hex[:8]}", exporter, lab.registry)
    async with caller:
        with pytest.raises(errors.InternalServerError):
            await caller.client.call(lab.name, "Lab.Fail", Probe(text="crash"), retries=0)
        with pytest.raises(errors.Forbidden):
            await caller.client.call(
                lab.name, "Lab.Fail", Probe(text="forbidden"), transport="grpc", retries=0
            )
    spans = exporter.get_finished_spans()
    [crashed, refused] = server_spans(exporter, "Lab/Fail")
    [called_crash, called_refused] = [
        span for span in spans if span.name == "Lab/Fail" and span.kind == SpanKind.CLIENT
    ]

    # A handler's own failure is the server's error: ERROR, with what it raised.
    assert crashed.status.status_code == StatusCode.ERROR
    assert (crashed.attributes or {})["error.type"] == "builtins.RuntimeError"
    assert [event.name for event in crashed.events] == ["exception"]
    # The caller sees it as the 500 it got.
    assert called_crash.status.status_code == StatusCode.ERROR
    assert (called_crash.attributes or {})["error.type"] == "500"
    assert (called_crash.attributes or {})["http.response.status_code"] == 500

    # A refusal (4xx) is the caller's error, not the server's: the server's span keeps its
    # status unset but says the code, the client's span is an error.
    assert refused.status.status_code == StatusCode.UNSET
    assert (refused.attributes or {})["error.type"] == "403"
    assert (refused.attributes or {})[
        "rpc.grpc.status_code"
    ] == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert called_refused.status.status_code == StatusCode.ERROR
    assert (called_refused.attributes or {})["error.type"] == "403"
    assert called_refused.status.description == "403 Forbidden: no entry"
    assert {trace_id(crashed)} == {trace_id(called_crash)}
    assert parent_of(refused) == span_id(called_refused)


@pytest.mark.parametrize("transport", ["http", "grpc"])
async def test_a_streams_client_span_lasts_until_its_last_reply(
    lab: Service, exporter: InMemorySpanExporter, transport: Literal["http", "grpc"]
) -> None:
    caller = traced(f"caller-{uuid.uuid4().hex[:8]}", exporter, lab.registry)
    async with caller:
        replies = [
            reply["text"]
            async for reply in caller.client.stream(
                lab.name, "Lab.Ticks", Probe(), transport=transport
            )
        ]
        ended_at = time.time_ns()
    assert replies == ["0", "1", "2"]
    [served] = server_spans(exporter, "Lab/Ticks")
    [called] = [
        span
        for span in exporter.get_finished_spans()
        if span.name == "Lab/Ticks" and span.kind == SpanKind.CLIENT
    ]
    assert parent_of(served) == span_id(called)
    assert (served.attributes or {})["rpc.system"] == transport
    assert served.end_time is not None
    assert called.end_time is not None
    assert served.end_time <= called.end_time <= ended_at
    assert called.status.status_code == StatusCode.UNSET


async def test_with_a_global_provider_a_request_gets_one_server_span(
    monkeypatch: pytest.MonkeyPatch, exporter: InMemorySpanExporter
) -> None:
    """FastAPI makes HTTP server spans of its own once a global tracer provider is set; a
    traced service's app gets only the service's, for RPC endpoints and plain routes alike."""
    name = f"globe-{uuid.uuid4().hex[:8]}"
    with monkeypatch.context() as patch:  # the global provider is set only for this test
        patch.setattr(trace, "_TRACER_PROVIDER", provider(exporter, name))
        await one_span_per_request(name)
    servers = [span.name for span in exporter.get_finished_spans() if span.kind == SpanKind.SERVER]
    assert sorted(servers) == ["GET /plain", "Globe/Spin"]


async def one_span_per_request(name: str) -> None:
    service = Service(
        name, registry=MemoryRegistry(), store="memory://", drain_grace=0.0, tracing=True
    )
    router = MicroRouter("Globe")

    @router.rpc()
    async def spin(req: Name) -> Name:
        return req

    app = FastAPI(lifespan=service.lifespan)
    app.include_router(router)

    @app.get("/plain")
    async def plain() -> dict[str, str]:
        return {"plain": "yes"}

    async with (
        serving(app, service) as address,
        httpx.AsyncClient(base_url=f"http://{address}", trust_env=False) as http,
    ):
        assert (await http.post("/globe/spin", json={"name": "Ada"})).status_code == 200
        assert (await http.get("/plain")).status_code == 200


# -- off unless configured; the service's own SDK provider ----------------------------------


def test_tracing_is_off_unless_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "MICRO_TRACING",
        "OTEL_TRACES_EXPORTER",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_SDK_DISABLED",
    ):
        monkeypatch.delenv(name, raising=False)
    off = Service(f"off-{uuid.uuid4().hex[:8]}", registry=MemoryRegistry(), store="memory://")
    assert off.tracing is None
    assert off.client.wrappers == ()
    assert wanted(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert wanted(None, {"OTEL_TRACES_EXPORTER": "console"})
    assert not wanted(None, {"OTEL_TRACES_EXPORTER": "none"})
    assert not wanted(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "x", "OTEL_SDK_DISABLED": "true"})
    assert not wanted(False, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    monkeypatch.setenv("MICRO_TRACING", "true")
    on = Service(f"on-{uuid.uuid4().hex[:8]}", registry=MemoryRegistry(), store="memory://")
    assert on.tracing is not None
    assert on.pipeline.wrappers[0] == on.tracing.server
    assert on.client.wrappers == (on.tracing.client,)


@contextlib.asynccontextmanager
async def collector() -> AsyncIterator[tuple[str, list[ExportTraceServiceRequest]]]:
    """An OTLP/HTTP trace receiver on loopback: yields its endpoint and what it received."""
    received: list[ExportTraceServiceRequest] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        if request.url.path == "/v1/traces":
            received.append(ExportTraceServiceRequest.FromString(await request.body()))
        await Response(b"", media_type="application/x-protobuf")(scope, receive, send)

    async with serve(app) as address:
        yield f"http://{address}", received


async def test_otel_environment_gives_the_service_an_sdk_provider_it_flushes_on_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with collector() as (endpoint, received):
        monkeypatch.delenv("MICRO_TRACING", raising=False)
        monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        name = f"exported-{uuid.uuid4().hex[:8]}"
        service = Service(name, version="1.2.3", registry=MemoryRegistry(), store="memory://")
        router = MicroRouter("Exported")

        @router.rpc()
        async def ping(req: Probe) -> Probe:
            return req

        app = FastAPI(lifespan=service.lifespan)
        app.include_router(router)
        async with serving(app, service) as address:
            async with httpx.AsyncClient(trust_env=False) as http:
                reply = await http.post(f"http://{address}/exported/ping", json={"text": "x"})
            assert reply.json() == {"text": "x"}
        # Stopped: the batch was flushed to the collector.
        await until(lambda: received, "the exported spans")
    [export] = received
    [resource_spans] = export.resource_spans
    resource = {item.key: item.value.string_value for item in resource_spans.resource.attributes}
    assert resource["service.name"] == name
    assert resource["service.version"] == "1.2.3"
    assert resource["service.instance.id"] == service.id
    [scope_spans] = resource_spans.scope_spans
    assert [span.name for span in scope_spans.spans] == ["Exported/Ping"]


@pytest.fixture(autouse=True)
def _no_global_provider() -> Iterator[None]:
    """The tests never set the process's global tracer provider (a service makes its own)."""
    from opentelemetry import trace

    before = trace.get_tracer_provider()
    yield
    assert trace.get_tracer_provider() is before
