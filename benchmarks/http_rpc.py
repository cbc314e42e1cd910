"""HTTP RPC overhead: asgi-micro against the raw stack, in one run.

Five apps echo the same ~100-byte JSON body through the same pydantic model:

    a  plain FastAPI route                      (the baseline users have today)
    b  plain Starlette route + orjson           (the floor: no validation framework)
    c  asgi-micro @rpc behind MicroMiddleware   (what the framework offers)
    d  MicroMiddleware in front of route a      (the cost of adopting it on an existing app)
    e  c with one server wrapper that does nothing but call on (the cost of the seam)

End to end: each app runs in its own uvicorn process (uvloop, httptools) pinned to core 0, all
side by side; wrk on core 1 drives them in shuffled, interleaved rounds. Reported: median
req/s, server CPU per request (from /proc), and the ratios c/a, c/b, d/a, e/c. In process: the
same ASGI apps called with a fake receive/send in alternating batches, which is steadier on a
noisy machine. ``--against REF`` serves c and d of another revision (a git ref) beside them, in
the same rounds, and prints this revision's figures over that one's. Everything stays on
127.0.0.1 and every loop is bounded.

    uv run python benchmarks/http_rpc.py [--rounds 8] [--seconds 3] [--connections 64]
                                         [--against REF] [--no-gc-freeze]

The services run as ``asgi-micro run`` runs them, each freezing the heap once started
(``MICRO_GC_FREEZE=true``); in process that is the worker's whole heap, both sides alike.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI
from harness import ROOT, alternate, checkout, cpu_seconds, free_port, python_in, wait_for_port
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from asgi_micro import MicroMiddleware, MicroRouter, Service
from asgi_micro.registry.memory import MemoryRegistry

BODY = (
    b'{"name":"Ada Lovelace","age":36,"tags":["mathematics","computing"],"active":true,"score":9.5}'
)
PATHS = {"a": "/echo", "b": "/echo", "c": "/bench/echo", "d": "/echo", "e": "/bench/echo"}
LABELS = {
    "a": "FastAPI route (pydantic)",
    "b": "Starlette + orjson",
    "c": "asgi-micro @rpc + middleware",
    "d": "MicroMiddleware + FastAPI route",
    "e": "c + one no-op server wrapper",
}
AGAINST = ("c", "d")  # what --against serves of the other revision


class Person(BaseModel):
    name: str
    age: int
    tags: list[str]
    active: bool
    score: float


def fastapi_app() -> FastAPI:
    app = FastAPI()

    @app.post("/echo")
    async def echo(person: Person) -> Person:
        return person

    return app


def starlette_app() -> Starlette:
    async def echo(request: Request) -> Response:
        data = orjson.loads(await request.body())
        return Response(orjson.dumps(data), media_type="application/json")

    return Starlette(routes=[Route("/echo", echo, methods=["POST"])])


def micro_service(name: str) -> Service:
    return Service(name, registry=MemoryRegistry(), address="127.0.0.1:1")


def micro_app(*, wrapped: bool = False) -> FastAPI:
    bench = MicroRouter("Bench")

    @bench.rpc()
    async def echo(person: Person) -> Person:
        return person

    app = FastAPI()
    app.include_router(bench)
    service = micro_service("bench-e" if wrapped else "bench-c")
    if wrapped:

        @service.wrap
        async def nothing(call: Any, next: Any) -> Any:
            return await next(call)

    app.add_middleware(MicroMiddleware, service=service)
    return app


def wrapped_app() -> FastAPI:
    return micro_app(wrapped=True)


def adopted_app() -> FastAPI:
    app = fastapi_app()
    app.add_middleware(MicroMiddleware, service=micro_service("bench-d"))
    return app


APPS = {"a": fastapi_app, "b": starlette_app, "c": micro_app, "d": adopted_app, "e": wrapped_app}


# -- end to end --------------------------------------------------------------------------------


def serve(kind: str, port: int) -> None:
    import uvicorn

    uvicorn.run(
        APPS[kind](),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


def run_wrk(script: str, port: int, path: str, seconds: int, connections: int) -> tuple[float, int]:
    output = subprocess.run(
        [
            "taskset",
            "-c",
            "1",
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "-s",
            script,
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
    ).stdout
    if "Non-2xx" in output:
        raise RuntimeError(f"errors during the run:\n{output}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    return rate, total


def variants(tree: Path | None) -> dict[str, tuple[str, Path | None]]:
    """What a run measures, by name: this revision's apps, and with ``--against`` c and d of
    the other one (``c@`` and ``d@``)."""
    found: dict[str, tuple[str, Path | None]] = {kind: (kind, None) for kind in APPS}
    if tree is not None:
        found.update({f"{kind}@": (kind, tree) for kind in AGAINST})
    return found


def end_to_end(
    rounds: int, seconds: int, connections: int, tree: Path | None
) -> dict[str, dict[str, float]]:
    if not shutil.which("wrk"):
        raise SystemExit("wrk is missing: apt-get install wrk")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\n'
            f"wrk.body = '{BODY.decode()}'\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
    runs = variants(tree)
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for name, (kind, source) in runs.items():
            port = free_port()
            command, env = python_in(source)
            path = (source or ROOT) / "benchmarks" / "http_rpc.py"
            process = subprocess.Popen(
                ["taskset", "-c", "0", *command, str(path), "--serve", kind, "--port", str(port)],
                stdout=subprocess.DEVNULL,
                env=env,
            )
            servers[name] = (process, port)
        for process, port in servers.values():
            wait_for_port(port, process)
        for name, (_, port) in servers.items():  # warm up
            run_wrk(script.name, port, PATHS[runs[name][0]], 1, connections)
        rates: dict[str, list[float]] = {name: [] for name in runs}
        cpu: dict[str, list[float]] = {name: [] for name in runs}
        for round_number in range(rounds):
            order = list(runs)
            random.shuffle(order)
            for name in order:
                process, port = servers[name]
                before = cpu_seconds(process.pid)
                rate, total = run_wrk(script.name, port, PATHS[runs[name][0]], seconds, connections)
                rates[name].append(rate)
                cpu[name].append((cpu_seconds(process.pid) - before) / total * 1e6)
            print(
                f"  round {round_number + 1}/{rounds}: "
                + ", ".join(f"{name} {rates[name][-1]:,.0f}" for name in runs),
                flush=True,
            )
        return {
            name: {"rps": statistics.median(rates[name]), "cpu_us": statistics.median(cpu[name])}
            for name in runs
        }
    finally:
        for process, _ in servers.values():
            process.terminate()
        for process, _ in servers.values():
            process.wait(timeout=10)
        os.unlink(script.name)


# -- in process ---------------------------------------------------------------------------------


class Lifespan:
    """Runs an app's lifespan in process, as a server would, and keeps its state."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Lifespan:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": self.state}
        self._task = asyncio.create_task(self.app(scope, self._inbox.get, self._outbox.put))
        await self._inbox.put({"type": "lifespan.startup"})
        message = await self._outbox.get()
        if message["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"startup failed: {message}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._inbox.put({"type": "lifespan.shutdown"})
        await self._outbox.get()
        assert self._task is not None
        await self._task


async def call_in_process(
    app: Any, path: str, calls: int, state: dict[str, Any] | None = None
) -> float:
    scope_template = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 5000),
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(BODY)).encode()),
        ],
        "state": state or {},
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
        scope["state"] = dict(scope_template["state"])
        await app(scope, receive, send)
    elapsed = time.perf_counter() - started
    if set(statuses) != {200}:
        raise RuntimeError(f"{path}: unexpected statuses {set(statuses)}")
    return elapsed / calls * 1e6


def in_process(rounds: int, batch: int, tree: Path | None) -> dict[str, float]:
    """Each revision's apps in a worker process of its own, batches alternating between them
    in shuffled order: the median microseconds per call of each."""
    return alternate("http_rpc.py", variants(tree), rounds, batch)


# -- report ------------------------------------------------------------------------------------


def report(
    e2e: dict[str, dict[str, float]] | None, local: dict[str, float], ref: str | None
) -> None:
    names = list(local)
    label = {
        name: LABELS[name] if name in LABELS else f"{LABELS[name[:-1]]} @ {ref}" for name in names
    }
    print("\nin process (us per call, lower is better; median of alternating batches)")
    for name, us in local.items():
        print(f"  {name:<3} {label[name]:<44} {us:8.1f} us   {1e6 / us:10,.0f} calls/s")
    ratios = [("c/a", "c", "a"), ("c/b", "c", "b"), ("d/a", "d", "a"), ("e/c", "e", "c")]
    if ref is not None:
        ratios += [
            ("c/c@", "c", "c@"),
            ("d/d@", "d", "d@"),
            ("c@/a", "c@", "a"),
            ("d@/a", "d@", "a"),
        ]
    print(
        "  ratios (throughput): "
        + "   ".join(f"{text} {local[bottom] / local[top]:.3f}x" for text, top, bottom in ratios)
    )
    if e2e is None:
        return
    print("\nend to end over loopback (uvicorn + uvloop + httptools on core 0, wrk on core 1)")
    for name, row in e2e.items():
        print(
            f"  {name:<3} {label[name]:<44} {row['rps']:10,.0f} req/s   {row['cpu_us']:6.1f} us CPU/request"
        )
    print(
        "  ratios (req/s): "
        + "   ".join(
            f"{text} {e2e[top]['rps'] / e2e[bottom]['rps']:.3f}x" for text, top, bottom in ratios
        )
    )
    print(
        "  ratios (requests per CPU second): "
        + "   ".join(
            f"{text} {e2e[bottom]['cpu_us'] / e2e[top]['cpu_us']:.3f}x"
            for text, top, bottom in ratios
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2000, help="calls per in-process batch")
    parser.add_argument("--in-process-only", action="store_true")
    parser.add_argument("--against", metavar="REF", help="also serve c and d of this git ref")
    parser.add_argument("--serve", choices=sorted(APPS), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--gc-freeze", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    # Services run as ``asgi-micro run`` runs them: each freezes the heap once started
    os.environ["MICRO_GC_FREEZE"] = "true" if args.gc_freeze else "false"
    if args.serve:
        serve(args.serve, args.port)
        return
    with checkout(args.against) as tree:
        print(f"in process: {args.rounds} rounds of {args.batch} calls per app")
        local = in_process(args.rounds, args.batch, tree)
        e2e = None
        if not args.in_process_only:
            print(
                f"end to end: {args.rounds} rounds x {args.seconds}s per app, {args.connections} connections"
            )
            e2e = end_to_end(args.rounds, args.seconds, args.connections, tree)
    report(e2e, local, args.against)


if __name__ == "__main__":
    main()
