"""Tracing's cost per call: the same echo RPC with tracing on (every call sampled, spans through
a ``BatchSpanProcessor``, as a service sets it up itself, to an in-memory exporter) and off
(nothing installed).

The exporter counts the spans it is given and keeps none, as an exporter that sends them away
does. ``--keep-spans`` uses the SDK's ``InMemorySpanExporter`` instead, which keeps every span
until the round's end (a round's ~15,000 spans; a few microseconds more per call here, the test
exporter's cost, not tracing's).

End to end: four servers, each in its own process pinned to core 0, side by side:

    http-off  the echo RPC over HTTP, tracing off
    http-on   the same with tracing on: a server span per call, a child of the caller's
    grpc-off  the echo RPC over gRPC (the service's gRPC server), tracing off
    grpc-on   the same with tracing on

Every request to every server carries the same ``traceparent``, so both sides read the same
bytes and each span on has a remote parent, as in the middle of a trace. wrk (HTTP) and h2load
(gRPC) on core 1 drive them in shuffled, interleaved rounds. Each server counts the calls its
handler ran and the spans it exported, and the
run fails unless every call the load generator saw done reached the handler and, with tracing
on, made a span. The servers run as ``asgi-micro run`` runs a service, their start-up heap
frozen (``MICRO_GC_FREEZE=true``; ``--no-gc-freeze`` leaves the collector alone). In process: the two HTTP apps called with a fake receive/send in alternating
batches (steadier on a noisy machine). Reported: median req/s, server CPU per call (from
/proc), microseconds per call in process, and the ratios on/off. Everything stays on
127.0.0.1; every loop is bounded.

    uv run python benchmarks/tracing.py [--rounds 6] [--seconds 3] [--connections 64]
                                        [--batch 1000] [--keep-spans] [--no-gc-freeze]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from grpc_rpc import PERSON, Person, generate, run_h2load
from harness import ROOT, cpu_seconds, free_port, python_in, wait_for_port
from http_rpc import BODY, Lifespan, run_wrk
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel

from asgi_micro import MicroRouter, Service
from asgi_micro.registry.memory import MemoryRegistry

SERVERS = ("http-off", "http-on", "grpc-off", "grpc-on")
HTTP_PATH = "/echo/echo"
COUNT_PATH = "/echo/count"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
SPAN = "Echo/Echo"  # the name of the echo call's server span


class CountingExporter(SpanExporter):
    """Counts the echo calls' spans as the processor exports them and keeps none."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += sum(1 for span in spans if span.name == SPAN)
        return SpanExportResult.SUCCESS

    def count(self) -> int:
        return self.spans


class KeptSpans(InMemorySpanExporter):
    """The SDK's in-memory exporter, its spans counted and cleared at each round's end."""

    def __init__(self) -> None:
        super().__init__()
        self.spans = 0

    def count(self) -> int:
        self.spans += sum(1 for span in self.get_finished_spans() if span.name == SPAN)
        self.clear()
        return self.spans


class Counts(BaseModel):
    calls: int
    spans: int


def app(*, on: bool, keep: bool = False, http_port: int = 1, grpc_port: int = 0) -> FastAPI:
    router = MicroRouter("Echo")
    calls = 0
    exporter = KeptSpans() if keep else CountingExporter()
    processor = BatchSpanProcessor(exporter)
    provider = TracerProvider()
    provider.add_span_processor(processor)

    @router.rpc(name="Echo")
    async def echo(person: Person) -> Person:
        nonlocal calls
        calls += 1
        return person

    @router.rpc()
    async def count(person: Person) -> Counts:
        processor.force_flush()
        return Counts(calls=calls, spans=exporter.count())

    service = Service(
        "bench",
        registry=MemoryRegistry(),
        store="memory://",
        broker="memory://",
        auth="noop://",
        address=f"127.0.0.1:{http_port}",
        grpc_address=f"127.0.0.1:{grpc_port}",
        tracing=provider if on else False,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
        try:
            async with service.lifespan(app) as state:
                yield state
        finally:
            provider.shutdown()

    application = FastAPI(lifespan=lifespan)
    application.include_router(router)
    return application


def serve(kind: str, http_port: int, grpc_port: int, keep: bool) -> None:
    import uvicorn

    uvicorn.run(
        app(on=kind.endswith("-on"), keep=keep, http_port=http_port, grpc_port=grpc_port),
        host="127.0.0.1",
        port=http_port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


def counted(http_port: int) -> Counts:
    """How many echo calls the server's handler ran, and how many spans they made."""
    reply = httpx.post(f"http://127.0.0.1:{http_port}{COUNT_PATH}", json=PERSON.model_dump())
    reply.raise_for_status()
    return Counts.model_validate_json(reply.content)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--in-process-only", action="store_true")
    parser.add_argument(
        "--keep-spans",
        action="store_true",
        help="the SDK's InMemorySpanExporter, which keeps every span until the round ends",
    )
    parser.add_argument("--gc-freeze", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--serve", choices=SERVERS)
    parser.add_argument("--port", type=int)
    parser.add_argument("--grpc-port", type=int)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.grpc_port, args.keep_spans)
        return
    results = None
    if not args.in_process_only:
        for tool, package in (("wrk", "wrk"), ("h2load", "nghttp2-client")):
            if not shutil.which(tool):
                raise SystemExit(f"{tool} is missing: apt-get install {package}")
        with tempfile.TemporaryDirectory() as directory:
            results = end_to_end(Path(directory), args)
    local = asyncio.run(in_process(args.rounds * 2, args.batch, args.keep_spans))
    report(results, local)


# -- end to end ---------------------------------------------------------------------------------


def end_to_end(directory: Path, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    script = directory / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = '{BODY.decode()}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["traceparent"] = "{TRACEPARENT}"\n'
    )
    messages, _ = generate(directory)
    payload = messages.Person(**PERSON.model_dump()).SerializeToString()
    data = directory / "request.bin"
    data.write_bytes(b"\x00" + len(payload).to_bytes(4, "big") + payload)
    servers: dict[str, tuple[subprocess.Popen[bytes], int, int]] = {}
    python, env = python_in(None)
    env["MICRO_GC_FREEZE"] = "true" if args.gc_freeze else "false"
    try:
        for kind in SERVERS:
            http_port, grpc_port = free_port(), free_port()
            command = [*python, str(ROOT / "benchmarks" / "tracing.py"), "--serve", kind]
            command += ["--port", str(http_port), "--grpc-port", str(grpc_port)]
            command += ["--keep-spans"] if args.keep_spans else []
            process = subprocess.Popen(["taskset", "-c", "0", *command], env=env)
            servers[kind] = (process, http_port, grpc_port)
        for process, http_port, grpc_port in servers.values():
            wait_for_port(http_port, process)
            wait_for_port(grpc_port, process)

        def load(kind: str, seconds: int) -> tuple[float, int]:
            _, http_port, grpc_port = servers[kind]
            if kind.startswith("http"):
                return run_wrk(str(script), http_port, HTTP_PATH, seconds, args.connections)
            return run_h2load(
                grpc_port,
                str(data),
                seconds,
                args.clients,
                args.streams,
                headers=[f"traceparent: {TRACEPARENT}"],
            )

        done = dict.fromkeys(SERVERS, 0)
        for kind in SERVERS:
            done[kind] += load(kind, 1)[1]  # warm up
        rates: dict[str, list[float]] = {kind: [] for kind in SERVERS}
        cpu: dict[str, list[float]] = {kind: [] for kind in SERVERS}
        for round_number in range(args.rounds):
            order = list(SERVERS)
            random.shuffle(order)
            for kind in order:
                process = servers[kind][0]
                before = cpu_seconds(process.pid)
                rate, total = load(kind, args.seconds)
                done[kind] += total
                rates[kind].append(rate)
                cpu[kind].append((cpu_seconds(process.pid) - before) / total * 1e6)
                if kind.endswith("-on") and args.keep_spans:
                    counted(servers[kind][1])  # the kept spans counted and cleared
            print(
                f"  round {round_number + 1}/{args.rounds}: "
                + ", ".join(f"{kind} {rates[kind][-1]:,.0f}" for kind in SERVERS),
                flush=True,
            )
        for kind, (_, http_port, _) in servers.items():
            counts = counted(http_port)
            if counts.calls < done[kind]:
                raise RuntimeError(
                    f"{kind}: the load generator saw {done[kind]} calls done, the handler ran "
                    f"{counts.calls}"
                )
            expected = counts.calls if kind.endswith("-on") else 0
            if counts.spans != expected:
                raise RuntimeError(f"{kind}: {counts.calls} calls made {counts.spans} spans")
    finally:
        for process, _, _ in servers.values():
            process.terminate()
        for process, _, _ in servers.values():
            process.wait(timeout=15)
    return {
        kind: {"rps": statistics.median(rates[kind]), "cpu_us": statistics.median(cpu[kind])}
        for kind in SERVERS
    }


# -- in process ---------------------------------------------------------------------------------


async def call_in_process(app: Any, calls: int, state: dict[str, Any]) -> float:
    """Microseconds per call of ``calls`` echo calls straight into the ASGI app."""
    scope_template = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": HTTP_PATH,
        "raw_path": HTTP_PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 5000),
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(BODY)).encode()),
            (b"traceparent", TRACEPARENT.encode()),
        ],
    }
    message = {"type": "http.request", "body": BODY, "more_body": False}

    async def receive() -> dict[str, Any]:
        return message

    statuses: list[int] = []

    async def send(event: dict[str, Any]) -> None:
        if event["type"] == "http.response.start":
            statuses.append(event["status"])

    started = time.perf_counter()
    for _ in range(calls):
        scope = dict(scope_template)
        scope["state"] = dict(state)
        await app(scope, receive, send)
    elapsed = time.perf_counter() - started
    if set(statuses) != {200}:
        raise RuntimeError(f"unexpected statuses {set(statuses)}")
    return elapsed / calls * 1e6


async def in_process(rounds: int, batch: int, keep: bool) -> dict[str, float]:
    """Both HTTP apps in this process, batches alternating in shuffled order: the median
    microseconds per call of each."""
    apps = {"http-off": app(on=False), "http-on": app(on=True, keep=keep)}
    async with contextlib.AsyncExitStack() as stack:
        states = {
            kind: (await stack.enter_async_context(Lifespan(application))).state
            for kind, application in apps.items()
        }
        for kind, application in apps.items():  # warm caches
            await call_in_process(application, 200, states[kind])
        timings: dict[str, list[float]] = {kind: [] for kind in apps}
        for _ in range(rounds):
            order = list(apps)
            random.shuffle(order)
            for kind in order:
                timings[kind].append(await call_in_process(apps[kind], batch, states[kind]))
    return {kind: statistics.median(values) for kind, values in timings.items()}


# -- report -------------------------------------------------------------------------------------


def report(e2e: dict[str, dict[str, float]] | None, local: dict[str, float]) -> None:
    if e2e is not None:
        print(f"\n{'server':10} {'req/s':>10} {'CPU us/call':>12}")
        for kind in SERVERS:
            print(f"{kind:10} {e2e[kind]['rps']:>10,.0f} {e2e[kind]['cpu_us']:>12.1f}")
        for transport in ("http", "grpc"):
            on, off = e2e[f"{transport}-on"], e2e[f"{transport}-off"]
            print(
                f"{transport}: tracing on / off = {on['rps'] / off['rps']:.3f} (req/s), "
                f"CPU per call {on['cpu_us'] - off['cpu_us']:+.1f} us"
            )
    plain, traced = local["http-off"], local["http-on"]
    print(
        f"in process (HTTP): off {plain:.1f} us/call, on {traced:.1f} us/call, "
        f"on / off = {plain / traced:.3f} (calls/s), {traced - plain:+.1f} us per call"
    )


if __name__ == "__main__":
    main()
