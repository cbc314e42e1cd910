"""Traces with OpenTelemetry: a span per call in, per call out and per event, one trace across
services.

    service = Service("greeter", tracing=True)        # or MICRO_TRACING=true, or OTEL_* env

With tracing on, a service adds one server wrapper and one client wrapper (``Tracing.server``,
``Tracing.client``), so every protocol gets the same spans:

- a ``SERVER`` span per incoming call, HTTP, WebSocket or gRPC alike, named
  ``<rpc.service>/<rpc.method>`` (``Greeter/Hello``; a plain route by its method and path,
  ``GET /items/{item_id}``), whose parent is the caller's ``traceparent``;
- a ``CLIENT`` span per outgoing ``call``, ``stream`` and ``service.http()`` request, whose
  ``traceparent`` (HTTP header, gRPC metadata) names that span as the callee's parent;
- a ``PRODUCER`` span per ``publish`` (``publish <topic>``), whose ``traceparent`` travels in
  the event's headers, and a ``CONSUMER`` span per event a subscriber handles
  (``process <topic>``), its child.

The server span is the current span while the handler runs, so the handler's own calls and
publishes, and spans the handler starts itself, are its children. A call to an ``address``
the caller chose gets a client span but no ``traceparent``: nothing of the incoming call goes
to a node not found through the registry (``asgi_micro.context``).

Off, nothing is installed: a service pays nothing for tracing it does not do (and the API's
default tracer provider is a no-op anyway). On, the spans go to the tracer provider given
(``Service(tracing=provider)``), else the process's global one when something configured it
(``opentelemetry-instrument``, ``trace.set_tracer_provider``), else one the service makes and
owns with the SDK (the ``otel`` extra): a ``BatchSpanProcessor`` to the exporters
``OTEL_TRACES_EXPORTER`` names (``otlp``, the default, is OTLP over HTTP to
``OTEL_EXPORTER_OTLP_ENDPOINT``; ``console``; ``none``), the sampler of ``OTEL_TRACES_SAMPLER``,
and a resource naming the service (``service.name``, ``service.version``,
``service.instance.id``). Its spans are flushed when the service stops.

FastAPI (0.165 and later) makes HTTP server spans of its own once a global tracer provider is
set (``FastAPI(telemetry=...)``, on by default). A traced service turns that off for the app it
serves, so that a request gets one server span, the service's (FastAPI's metrics and logs
telemetry stay as they are).

While tracing is on, every log record carries the current span's ids as ``trace_id`` (32 hex
digits) and ``span_id`` (16), both ``""`` outside a span:
``logging.basicConfig(format="%(levelname)s [%(trace_id)s %(span_id)s] %(message)s")``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Mapping
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .__about__ import __version__
from .errors import MicroError
from .plugins import Lifecycle

if TYPE_CHECKING:
    from .client.calls import ClientCall, ClientNext
    from .pipeline import Call, Next

__all__ = ["OTEL_EXTRA", "Tracing", "install_log_ids", "own_server_spans", "tracing_for", "wanted"]

logger = logging.getLogger(__name__)

OTEL_EXTRA = "asgi-micro[otel]"
"""What installs the SDK and the OTLP exporter: ``pip install 'asgi-micro[otel]'``."""

_PROPAGATOR = TraceContextTextMapPropagator()  # the headers asgi_micro.context carries
_ROOT = otel_context.Context()  # a call that carries no trace starts one
_STREAMS = frozenset(("server", "client", "bidi"))
_MESSAGING_SYSTEMS = {"amqp": "rabbitmq", "amqps": "rabbitmq", "rediss": "redis"}


def wanted(setting: bool | None, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether tracing is on: as ``setting`` (``Service(tracing=...)``, ``MICRO_TRACING``)
    says, else when the OpenTelemetry environment asks for traces (an OTLP endpoint, or
    ``OTEL_TRACES_EXPORTER`` other than ``none``) and ``OTEL_SDK_DISABLED`` is not true."""
    if setting is not None:
        return setting
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return exporters != "none"
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def tracing_for(
    setting: bool | TracerProvider | Tracing | None,
    *,
    service: str,
    version: str = "",
    instance: str = "",
    broker_url: str = "",
) -> Tracing | None:
    """The tracing of a service as ``Service(tracing=...)`` or ``MICRO_TRACING`` has it:
    ``None`` when off; a ``TracerProvider`` given is used as it is."""
    if isinstance(setting, Tracing):
        return setting
    if isinstance(setting, TracerProvider):
        provider: TracerProvider | None = setting
    elif wanted(setting):
        provider = None
    else:
        return None
    return Tracing(
        tracer_provider=provider,
        service=service,
        version=version,
        instance=instance,
        messaging_system=_messaging_system(broker_url),
    )


def own_server_spans(app: object) -> None:
    """Turn FastAPI's own HTTP server spans off for ``app``, whose calls get the service's.

    FastAPI keeps its telemetry settings in ``app._telemetry`` (read on every request); there
    is no public way to change them once the app is made."""
    config = getattr(app, "_telemetry", None)
    if isinstance(config, dict) and config.get("tracing"):
        config["tracing"] = False


def _messaging_system(broker_url: str) -> str:
    """``messaging.system`` of a broker URL: its scheme, in OpenTelemetry's names."""
    scheme = urlsplit(broker_url).scheme.lower()
    return _MESSAGING_SYSTEMS.get(scheme, scheme)


class Tracing(Lifecycle):
    """A service's spans: ``server`` is its server wrapper, ``client`` its client wrapper.

    ``tracer_provider`` is where the spans go; without one, the global provider when one is
    configured, else (from ``start`` to ``stop``) an SDK provider of the service's own, set up
    from the ``OTEL_*`` environment (see the module's docstring)."""

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        service: str = "",
        version: str = "",
        instance: str = "",
        messaging_system: str = "",
    ) -> None:
        self.tracer_provider = tracer_provider
        self.service = service
        self.version = version
        self.instance = instance
        self.messaging_system = messaging_system
        self.tracer: Tracer = self._tracer_of(tracer_provider or trace.get_tracer_provider())
        self._owned: Any = None  # the SDK provider made in start, shut down in stop

    def _tracer_of(self, provider: TracerProvider) -> Tracer:
        return provider.get_tracer("asgi_micro", __version__)

    async def start(self) -> None:
        install_log_ids()
        if self.tracer_provider is not None or self._owned is not None:
            return
        if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            return  # the process configured its own: the global tracer goes to it
        self._owned = _sdk_provider(
            {
                "service.name": self.service,
                "service.version": self.version,
                "service.instance.id": self.instance,
            }
        )
        if self._owned is not None:
            self.tracer = self._tracer_of(self._owned)

    async def stop(self) -> None:
        owned, self._owned = self._owned, None
        if owned is not None:
            self.tracer = self._tracer_of(trace.get_tracer_provider())
            await asyncio.to_thread(owned.shutdown)  # exports what is still queued

    # -- the server wrapper -------------------------------------------------------------------

    async def server(self, call: Call, next: Next) -> Any:
        """A server wrapper: the call's span, current while the rest of the pipeline runs."""
        carrier = call.context.trace
        parent = _PROPAGATOR.extract(carrier) if carrier else _ROOT
        name, kind, attributes = _server_span(call, self.messaging_system)
        span = self.tracer.start_span(name, parent, kind, attributes)
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        try:
            result = await next(call)
        except Exception as error:
            _failed(span, error, call.protocol, always=kind is SpanKind.CONSUMER)
            raise
        else:
            if call.protocol == "grpc":
                span.set_attribute("rpc.grpc.status_code", 0)
            return result
        finally:
            otel_context.detach(token)
            span.end()

    # -- the client wrapper -------------------------------------------------------------------

    async def client(self, call: ClientCall, next: ClientNext) -> Any:
        """A client wrapper: the outgoing call's span, named in its ``traceparent``."""
        parent = None
        carrier = call.context.trace
        if carrier and not trace.get_current_span().get_span_context().is_valid:
            parent = _PROPAGATOR.extract(carrier)  # the asgi-micro context's trace, then
        name, kind, attributes = _client_span(call, self.messaging_system)
        span = self.tracer.start_span(name, parent, kind, attributes)
        current = trace.set_span_in_context(span, parent)
        if call.address is None:
            headers: dict[str, str] = {}
            _PROPAGATOR.inject(headers, current)
            call.context.trace = headers
        token = otel_context.attach(current)
        try:
            result = await next(call)
        except Exception as error:
            _failed(span, error, call.protocol, always=True)
            span.end()
            raise
        finally:
            otel_context.detach(token)
        if call.kind in _STREAMS:
            return _traced(result, span, call.protocol)  # the span lasts as long as the stream
        _succeeded(span, call, result)
        span.end()
        return result


def _server_span(call: Call, system: str) -> tuple[str, SpanKind, dict[str, Any]]:
    protocol, endpoint = call.protocol, call.endpoint
    if protocol == "event":
        attributes: dict[str, Any] = {
            "messaging.system": system,
            "messaging.destination.name": endpoint,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
        }
        event = call.state.get("event")
        if event is not None:
            attributes["messaging.message.id"] = event.id
        return f"process {endpoint}", SpanKind.CONSUMER, attributes
    if call.rpc is None:  # a plain route: GET /items/{item_id}, WEBSOCKET /feed
        method, _, route = endpoint.partition(" ")
        attributes = {"http.route": route}
        if protocol == "http":
            attributes["http.request.method"] = method
        return endpoint, SpanKind.SERVER, attributes
    service, method = _split(endpoint)
    return (
        f"{service}/{method}",
        SpanKind.SERVER,
        {"rpc.system": protocol, "rpc.service": service, "rpc.method": method},
    )


def _client_span(call: ClientCall, system: str) -> tuple[str, SpanKind, dict[str, Any]]:
    if call.kind == "publish":
        return (
            f"publish {call.endpoint}",
            SpanKind.PRODUCER,
            {
                "messaging.system": system,
                "messaging.destination.name": call.endpoint,
                "messaging.operation.type": "send",
                "messaging.operation.name": "publish",
            },
        )
    if call.kind == "http":  # service.http(): GET /items/1
        method, _, path = call.endpoint.partition(" ")
        return (
            method,
            SpanKind.CLIENT,
            {"http.request.method": method, "url.path": path, "server.address": call.service},
        )
    service, method = _split(call.endpoint)
    return (
        f"{service}/{method}",
        SpanKind.CLIENT,
        {
            "rpc.system": call.protocol,
            "rpc.service": service,
            "rpc.method": method,
            "server.address": call.address or call.service,
        },
    )


def _split(endpoint: str) -> tuple[str, str]:
    """``Greeter.Hello`` as ``rpc.service`` and ``rpc.method``."""
    service, _, method = endpoint.rpartition(".")
    return service, method


def _succeeded(span: Span, call: ClientCall, result: Any) -> None:
    if call.kind == "publish":
        span.set_attribute("messaging.message.id", str(result))
    elif call.kind == "http":
        status = getattr(result, "status_code", 0)
        span.set_attribute("http.response.status_code", status)
        if status >= 400:
            span.set_attribute("error.type", str(status))
            span.set_status(Status(StatusCode.ERROR))
    elif call.protocol == "grpc":
        span.set_attribute("rpc.grpc.status_code", 0)


def _failed(span: Span, error: Exception, protocol: str, *, always: bool) -> None:
    """Mark ``span`` with ``error``: ``error.type`` and the code it travels as; status
    ``ERROR`` for a server's fault (5xx, or any exception that is not a ``MicroError``) or,
    with ``always`` (a client's span, a consumer's), for any error."""
    if isinstance(error, MicroError):
        code = error.code
        span.set_attribute("error.type", str(code))
        if protocol == "grpc":
            from .grpc.status import status_for

            span.set_attribute("rpc.grpc.status_code", status_for(error).value[0])
        elif protocol in ("http", "websocket"):
            span.set_attribute("http.response.status_code", code)
        if not (always or code >= 500):
            return
        description = f"{code} {error.status}: {error.detail}"
    else:
        span.set_attribute("error.type", f"{type(error).__module__}.{type(error).__qualname__}")
        description = f"{type(error).__name__}: {error}"
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, description))


async def _traced(replies: AsyncIterator[Any], span: Span, protocol: str) -> AsyncIterator[Any]:
    """``replies``, ending ``span`` when they end (or fail, or are closed early)."""
    try:
        async for reply in replies:
            yield reply
    except Exception as error:
        _failed(span, error, protocol, always=True)
        raise
    finally:
        close = getattr(replies, "aclose", None)
        if close is not None:
            await close()
        span.end()


# -- the SDK, when the service makes its own provider ---------------------------------------


def _sdk_provider(resource: dict[str, str]) -> Any:
    """An SDK tracer provider exporting as ``OTEL_TRACES_EXPORTER`` says, or ``None`` (with
    a warning) without the SDK."""
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider as SDKTracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        logger.warning(
            "tracing is on but no tracer provider is configured and the OpenTelemetry SDK is "
            "not installed: spans go nowhere; pip install '%s'",
            OTEL_EXTRA,
        )
        return None
    provider = SDKTracerProvider(resource=Resource.create(resource))
    for exporter in _exporters(os.environ.get("OTEL_TRACES_EXPORTER", "otlp")):
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _exporters(names: str) -> list[Any]:
    """The span exporters a comma-separated ``OTEL_TRACES_EXPORTER`` names: ``otlp`` is OTLP
    over HTTP (what the ``otel`` extra installs) unless ``OTEL_EXPORTER_OTLP_PROTOCOL`` says
    ``grpc``; any other name an entry point of the group ``opentelemetry_traces_exporter``
    (``console``, ``otlp_proto_grpc``...)."""
    found = []
    for name in (part.strip().lower() for part in names.split(",")):
        if not name or name == "none":
            continue
        if name == "otlp":
            protocol = os.environ.get(
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            )
            name = "otlp_proto_grpc" if protocol == "grpc" else "otlp_proto_http"
        [*points] = entry_points(group="opentelemetry_traces_exporter", name=name)
        if not points:
            raise RuntimeError(
                f"OTEL_TRACES_EXPORTER names {name!r}, which no installed package provides"
                + (f": pip install '{OTEL_EXTRA}'" if name == "otlp_proto_http" else "")
            )
        found.append(points[0].load()())
    return found


# -- trace ids in log records ---------------------------------------------------------------

_log_ids_installed = False


def install_log_ids() -> None:
    """Give every log record the current span's ``trace_id`` and ``span_id`` (``""`` outside
    a span), for a log format's ``%(trace_id)s``; once per process, whatever calls it."""
    global _log_ids_installed
    if _log_ids_installed:
        return
    _log_ids_installed = True
    make_record = logging.getLogRecordFactory()

    def record_with_ids(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            record.trace_id = format(span_context.trace_id, "032x")
            record.span_id = format(span_context.span_id, "016x")
        else:
            record.trace_id = record.span_id = ""
        return record

    logging.setLogRecordFactory(record_with_ids)
