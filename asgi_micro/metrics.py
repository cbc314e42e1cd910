"""Prometheus metrics of a service, served at ``/_micro/metrics``.

``Metrics`` is a part of the service, on unless ``Service(metrics=False)`` or
``MICRO_METRICS=off``. It observes every incoming call (a pipeline observer: told of each call
once it ended, without taking an RPC off its fast path) and puts a client wrapper around every
outgoing call and publish, so a call is measured the same way on every
protocol, and counts the client's registry lookups. Names and labels follow OpenTelemetry's RPC
and messaging semantic conventions as Prometheus spells them (dots become underscores, the unit
a suffix, counters end in ``_total``); what the conventions do not cover is named ``micro_*``:

    rpc_server_call_duration_seconds      histogram  rpc_system_name, rpc_method,
                                                     rpc_response_status_code, error_type
    rpc_client_call_duration_seconds      histogram  the same, and rpc_service (the callee)
    messaging_process_duration_seconds    histogram  messaging_system,
                                                     messaging_destination_name,
                                                     messaging_consumer_group_name, error_type
    messaging_client_operation_duration_seconds
                                          histogram  messaging_system,
                                                     messaging_destination_name,
                                                     messaging_operation_name, error_type
    micro_event_lag_seconds               histogram  messaging_system,
                                                     messaging_destination_name,
                                                     messaging_consumer_group_name
    micro_registry_cache_lookups_total    counter    result (hit, miss)
    micro_server_in_flight_calls          gauge
    micro_draining                        gauge      1 while the node drains

A histogram's ``_count`` is the number of calls, so calls, errors by code and durations come
from one series per label set. Every label value is bounded: ``rpc_method`` is the endpoint's
name as the registry lists it (``Greeter.Hello``, ``GET /items/{item_id}``), never a raw path
(a request through ``service.http()`` is named by its HTTP method alone);
``rpc_response_status_code`` is the gRPC status name on every protocol (``OK``,
``NOT_FOUND``...), as asgi-micro's errors map onto it; ``error_type`` is empty for a success,
the HTTP code of a ``MicroError`` (``404``, ``503``) or the class of any other exception.

Each service keeps a registry of its own (two services in one process do not mix). Under
several worker processes (``uvicorn --workers 2``) set ``PROMETHEUS_MULTIPROC_DIR`` to an empty
directory shared by the workers, as prometheus-client's multiprocess mode asks: the values go to
files there and a scrape of any worker reports the sum over all of them. One directory serves
one service.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client import values as prometheus_values
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from .errors import MicroError
from .grpc.status import status_for

if TYPE_CHECKING:
    from .broker import Broker
    from .client import Client, ClientCall, ClientNext
    from .events import Events
    from .pipeline import Call, Pipeline

__all__ = ["DURATION_BUCKETS", "Measured", "Metrics"]

DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds: from a call served from memory to one that waits on a slow engine."""
LAG_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)
"""Seconds: from an event handled at once to one redelivered an hour later."""

_RPC = ("rpc_system_name", "rpc_method", "rpc_response_status_code", "error_type")
_CONSUMED = ("messaging_system", "messaging_destination_name", "messaging_consumer_group_name")
_PUBLISHED = (
    "messaging_system",
    "messaging_destination_name",
    "messaging_operation_name",
    "error_type",
)
_SYSTEMS = {"amqp": "rabbitmq", "amqps": "rabbitmq"}  # the conventions' name for the engine
_IN_FLIGHT = ("micro_server_in_flight_calls", "Incoming calls being handled now.")
_DRAINING = ("micro_draining", "1 while the node drains (deregistered, finishing its calls).")


class Measured(Protocol):
    """What the metrics need of a service: its pipeline, broker, events and client."""

    @property
    def pipeline(self) -> Pipeline: ...

    @property
    def broker(self) -> Broker: ...

    @property
    def events(self) -> Events: ...

    @property
    def client(self) -> Client: ...


class _Observer(Protocol):
    """One label set of a histogram."""

    def observe(self, amount: float) -> None: ...


class Metrics:
    """The metrics of one service: ``served`` is its pipeline observer, ``call`` its client
    wrapper (put around the service's client by ``start``), ``expose`` a scrape.

    In one process the values are plain Python numbers that the event loop adds to, read at
    each scrape (prometheus-client's own metrics take a lock per bucket of every
    observation, which cost more than the rest of a call's measuring together). In
    multiprocess mode they are prometheus-client's metrics, whose values live in the shared
    directory."""

    def __init__(self, service: Measured, *, on: bool = True) -> None:
        self.service = service
        self.on = on
        self.multiprocess = bool(getattr(prometheus_values.ValueClass, "_multiprocess", False))
        """Whether values go to ``PROMETHEUS_MULTIPROC_DIR`` (decided when prometheus-client
        was imported), to be summed over the workers at each scrape."""
        self.registry = CollectorRegistry()
        self._families: list[_Histogram | _Counter] = []
        self.server_calls = self._histogram(
            "rpc_server_call_duration_seconds",
            "Duration of incoming calls, by endpoint, protocol and outcome.",
            _RPC,
        )
        self.client_calls = self._histogram(
            "rpc_client_call_duration_seconds",
            "Duration of outgoing calls, retries included, by callee, endpoint and outcome.",
            ("rpc_service", *_RPC),
        )
        self.processed = self._histogram(
            "messaging_process_duration_seconds",
            "Duration of handling an event, by topic, queue group and outcome.",
            (*_CONSUMED, "error_type"),
        )
        self.published = self._histogram(
            "messaging_client_operation_duration_seconds",
            "Duration of publishing an event until the broker accepted it, by topic.",
            _PUBLISHED,
        )
        self.lag = self._histogram(
            "micro_event_lag_seconds",
            "Seconds from an event's publication (ce-time) to its handling, redeliveries included.",
            _CONSUMED,
            LAG_BUCKETS,
        )
        lookups = self._counter(
            "micro_registry_cache_lookups",
            "The client's lookups of a service: answered from its cache (hit) or not (miss).",
            ("result",),
        )
        self._hit, self._miss = lookups.labels("hit"), lookups.labels("miss")
        # In one process, what is in flight is the pipeline's count, read at each scrape; across
        # processes, each counts its own into a shared gauge.
        self._in_flight: Gauge | None = None
        self._draining: Gauge | None = None
        if self.multiprocess:
            self._in_flight = Gauge(*_IN_FLIGHT, registry=None, multiprocess_mode="livesum")
            self._draining = Gauge(*_DRAINING, registry=None, multiprocess_mode="livemax")
        else:
            self.registry.register(self)
        self._servers: dict[tuple[str, str, str], _Observer] = {}
        self._clients: dict[tuple[str, str, str, str], _Observer] = {}
        self._consumers: dict[tuple[Any, ...], _Observer] = {}
        self._publishers: dict[tuple[str, str], _Observer] = {}
        self._groups: dict[Any, str] | None = None
        self._client: Client | None = None

    def _histogram(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str],
        buckets: Sequence[float] = DURATION_BUCKETS,
    ) -> _Histogram | Histogram:
        if self.multiprocess:
            base = name.removesuffix("_seconds")
            return Histogram(base, documentation, labels, unit="seconds", buckets=buckets)
        family = _Histogram(name, documentation, labels, buckets)
        self._families.append(family)
        return family

    def _counter(self, name: str, documentation: str, labels: Sequence[str]) -> _Counter | Counter:
        if self.multiprocess:
            return Counter(name, documentation, labels)
        family = _Counter(name, documentation, labels)
        self._families.append(family)
        return family

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Measure the service's client: its calls and publishes, and its registry lookups."""
        if not self.on:
            return
        client = self.service.client
        if client is not self._client:  # a new client after a stop, or the first one
            client.wrap(self.call)
            client.cache.on_lookup = self.looked_up
            self._client = client

    async def stop(self) -> None:
        """This process stops counting in the live gauges of a multiprocess directory."""
        if self.on and self.multiprocess:
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]

    # -- wrappers -----------------------------------------------------------------------------

    def served(
        self,
        call: Call | None,
        protocol: str,
        endpoint: str,
        seconds: float,
        error: BaseException | None,
    ) -> None:
        """The pipeline's observer: told of every incoming call once it ended."""
        failure = "" if error is None else _error_type(error)
        if self._in_flight is not None:  # this one is still counted until its entry point ends
            self._in_flight.set(max(0, self.service.pipeline.stats.in_flight - 1))
        if protocol == "event" and call is not None:
            self._processed(call, seconds, failure)
            return
        key = (protocol, endpoint, failure)
        child = self._servers.get(key)
        if child is None:
            child = self._servers[key] = self.server_calls.labels(
                protocol, endpoint, _status_name(failure), failure
            )
        child.observe(seconds)

    def _processed(self, call: Call, seconds: float, failure: str) -> None:
        topic, group = call.endpoint, self._group(call.rpc)
        event = call.state.get("event")
        sent_at = _timestamp(event.time) if event is not None else None
        if sent_at is not None:  # from publication to when handling began
            lag = time.time() - seconds - sent_at
            self._consumer(self.lag, topic, group).observe(max(0.0, lag))
        self._consumer(self.processed, topic, group, failure).observe(seconds)

    async def call(self, call: ClientCall, next: ClientNext) -> Any:
        """The client wrapper: times every outgoing call, and every publish."""
        started = time.perf_counter()
        error = ""
        try:
            return await next(call)
        except BaseException as exc:
            error = _error_type(exc)
            raise
        finally:
            elapsed = time.perf_counter() - started
            if call.protocol == "event":
                self._published(call.endpoint, error).observe(elapsed)
            else:
                method = call.endpoint
                if call.kind == "http":  # "GET /items/1": a path the registry does not list
                    method = method.split(" ", 1)[0]
                key = (call.service, call.protocol, method, error)
                child = self._clients.get(key)
                if child is None:
                    child = self._clients[key] = self.client_calls.labels(
                        call.service, call.protocol, method, _status_name(error), error
                    )
                child.observe(elapsed)

    def _published(self, topic: str, error: str) -> _Observer:
        key = (topic, error)
        child = self._publishers.get(key)
        if child is None:
            child = self._publishers[key] = self.published.labels(
                self._system(), topic, "publish", error
            )
        return child

    def _consumer(
        self, metric: _Histogram | Histogram, topic: str, group: str, *error: str
    ) -> _Observer:
        key = (metric, topic, group, *error)
        child = self._consumers.get(key)
        if child is None:
            child = self._consumers[key] = metric.labels(self._system(), topic, group, *error)
        return child

    def looked_up(self, hit: bool) -> None:
        """The client's registry cache answered a lookup (``hit``) or had to ask."""
        (self._hit if hit else self._miss).inc()

    # -- scraping -----------------------------------------------------------------------------

    def expose(self, accept: str = "") -> tuple[bytes, str]:
        """A scrape: the metrics in the Prometheus text format, or OpenMetrics when ``accept``
        asks for it; with the content type to send."""
        encoder, content_type = choose_encoder(accept)
        if self.multiprocess:
            assert self._draining is not None
            self._draining.set(1 if self.service.pipeline.draining else 0)
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return encoder(registry), content_type
        return encoder(self.registry), content_type

    def collect(self) -> Iterator[Metric]:
        """The values of one process, as its registry's collector."""
        for family in self._families:
            yield family.collect()
        yield GaugeMetricFamily(*_IN_FLIGHT, value=self.service.pipeline.stats.in_flight)
        yield GaugeMetricFamily(*_DRAINING, value=1 if self.service.pipeline.draining else 0)

    # -- labels -------------------------------------------------------------------------------

    def _system(self) -> str:
        broker = self.service.broker
        scheme = urlsplit(broker.url).scheme.lower() if broker.url else ""
        return _SYSTEMS.get(scheme, scheme) or type(broker).__name__.lower()

    def _group(self, rpc: Any) -> str:
        if self._groups is None:
            self._groups = {s.rpc: s.queue or "" for s in self.service.events.subscribers}
        return self._groups.get(rpc, "")


class _Series:
    """One label set of a histogram in plain numbers: an observation adds to a list."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket, the last one +Inf's
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self.bounds, amount)] += 1  # the first bound >= amount
        self.sum += amount


class _Histogram:
    """A histogram family of one process, in ``_Series`` by label values."""

    def __init__(
        self, name: str, documentation: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labels)
        self.bounds = tuple(sorted(buckets))
        self._edges = [
            floatToGoString(bound)  # type: ignore[no-untyped-call]
            for bound in (*self.bounds, math.inf)
        ]
        self.series: dict[tuple[str, ...], _Series] = {}

    def labels(self, *values: str) -> _Series:
        found = self.series.get(values)
        if found is None:
            found = self.series[values] = _Series(self.bounds)
        return found

    def collect(self) -> Metric:
        family = HistogramMetricFamily(
            self.name, self.documentation, labels=self.labelnames, unit="seconds"
        )
        for labels, series in list(self.series.items()):
            cumulative = itertools.accumulate(series.counts)
            buckets = list(zip(self._edges, cumulative, strict=True))
            family.add_metric(list(labels), buckets, series.sum)
        return family


class _Count:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1


class _Counter:
    """A counter family of one process, in ``_Count`` by label values."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labels)
        self.counts: dict[tuple[str, ...], _Count] = {}

    def labels(self, *values: str) -> _Count:
        found = self.counts.get(values)
        if found is None:
            found = self.counts[values] = _Count()
        return found

    def collect(self) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, count in list(self.counts.items()):
            family.add_metric(list(labels), count.value)
        return family


def _error_type(exc: BaseException) -> str:
    if isinstance(exc, MicroError):
        return str(exc.code)
    kind = type(exc)
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


def _status_name(error: str) -> str:
    """The gRPC status name of an outcome: ``OK``, the one an error's HTTP code maps to, or
    ``CANCELLED``/``INTERNAL`` for an exception that is not a ``MicroError``."""
    if not error:
        return "OK"
    if error.isdigit():
        return _status_of_code(int(error))
    return "CANCELLED" if error.endswith("CancelledError") else "INTERNAL"


def _status_of_code(code: int) -> str:
    error = MicroError()
    error.code = code
    return str(status_for(error).name)


def _timestamp(text: str) -> float | None:
    """Seconds since the epoch of a CloudEvents ``time`` (RFC 3339), if it reads as one."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None
