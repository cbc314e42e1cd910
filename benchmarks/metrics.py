"""The metrics' cost per call: the same echo RPC with metrics off and on, in one run.

    off   asgi-micro @rpc behind MicroMiddleware, ``Service(metrics=False)``: no wrapper, so
          the RPC keeps its fast path (the request is the handler's one argument)
    on    the same with the metrics on (the default): one server wrapper timing every call
          into a histogram and counting it in flight
    mp    on, in prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``), as under
          several uvicorn workers: every value goes to a memory-mapped file (end to end only)

End to end: each app in its own uvicorn process (uvloop, httptools) pinned to core 0, side by
side; wrk on core 1 drives them in shuffled, interleaved rounds. Reported: median req/s, server
CPU per call (from /proc), and the ratios on/off and mp/off. After the rounds the servers that
measure are scraped: each must have counted at least every call wrk saw done. In process: off
and on called with a fake receive/send in alternating batches (steadier on a noisy machine;
cost added by app code shows about 3x larger end to end). Everything stays on 127.0.0.1; every
loop is bounded.

    uv run python benchmarks/metrics.py [--rounds 8] [--seconds 3] [--connections 64]
                                        [--batch 2000] [--in-process-only]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

import httpx
from fastapi import FastAPI
from harness import ROOT, alternate, cpu_seconds, free_port, python_in, wait_for_port
from http_rpc import BODY, Lifespan, Person, call_in_process, run_wrk
from prometheus_client.parser import text_string_to_metric_families

from asgi_micro import MicroMiddleware, MicroRouter, Service
from asgi_micro.registry.memory import MemoryRegistry

__all__ = ["APPS", "PATHS", "Lifespan", "call_in_process"]  # what benchmarks/worker.py uses

PATH = "/bench/echo"
SERVERS = ("off", "on", "mp")


def app(*, metrics: bool) -> FastAPI:
    bench = MicroRouter("Bench")

    @bench.rpc()
    async def echo(person: Person) -> Person:
        return person

    application = FastAPI()
    application.include_router(bench)
    service = Service(
        "bench",
        registry=MemoryRegistry(),
        store="memory://",
        broker="memory://",
        address="127.0.0.1:1",
        grpc=False,
        metrics=metrics,
    )
    application.add_middleware(MicroMiddleware, service=service)
    return application


APPS = {"off": lambda: app(metrics=False), "on": lambda: app(metrics=True)}
PATHS = dict.fromkeys(APPS, PATH)


def serve(kind: str, port: int) -> None:
    import uvicorn

    uvicorn.run(
        app(metrics=kind != "off"),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


def counted(port: int) -> int:
    """The calls of the echo the server's metrics counted."""
    text = httpx.get(f"http://127.0.0.1:{port}/_micro/metrics", timeout=10).text
    return int(
        sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "rpc_server_call_duration_seconds_count"
            and sample.labels.get("rpc_method") == "Bench.Echo"
        )
    )


def end_to_end(args: argparse.Namespace, directory: Path) -> dict[str, dict[str, float]]:
    script = directory / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = '{BODY.decode()}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    python, env = python_in(None)
    try:
        for kind in SERVERS:
            port = free_port()
            server_env = dict(env)
            server_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
            if kind == "mp":
                (directory / "prometheus").mkdir()
                server_env["PROMETHEUS_MULTIPROC_DIR"] = str(directory / "prometheus")
            command = [*python, str(ROOT / "benchmarks" / "metrics.py"), "--serve", kind]
            process = subprocess.Popen(
                ["taskset", "-c", "0", *command, "--port", str(port)],
                stdout=subprocess.DEVNULL,
                env=server_env,
            )
            servers[kind] = (process, port)
        for process, port in servers.values():
            wait_for_port(port, process)
        for _, port in servers.values():  # warm up
            run_wrk(str(script), port, PATH, 1, args.connections)
        rates: dict[str, list[float]] = {kind: [] for kind in SERVERS}
        cpu: dict[str, list[float]] = {kind: [] for kind in SERVERS}
        done = dict.fromkeys(SERVERS, 0)
        for round_number in range(args.rounds):
            order = list(SERVERS)
            random.shuffle(order)
            for kind in order:
                process, port = servers[kind]
                before = cpu_seconds(process.pid)
                rate, total = run_wrk(str(script), port, PATH, args.seconds, args.connections)
                done[kind] += total
                rates[kind].append(rate)
                cpu[kind].append((cpu_seconds(process.pid) - before) / total * 1e6)
            print(
                f"  round {round_number + 1}/{args.rounds}: "
                + ", ".join(f"{kind} {rates[kind][-1]:,.0f}" for kind in SERVERS),
                flush=True,
            )
        for kind in ("on", "mp"):
            seen = counted(servers[kind][1])
            if seen < done[kind]:
                raise RuntimeError(f"{kind}: wrk saw {done[kind]} calls done, metrics {seen}")
    finally:
        for process, _ in servers.values():
            process.terminate()
        for process, _ in servers.values():
            process.wait(timeout=15)
    return {
        kind: {"rps": statistics.median(rates[kind]), "cpu_us": statistics.median(cpu[kind])}
        for kind in SERVERS
    }


def report(e2e: dict[str, dict[str, float]] | None, local: dict[str, float]) -> None:
    print(f"\nin process: off {local['off']:.1f} us/call, on {local['on']:.1f} us/call")
    print(
        f"in process: on / off = {local['off'] / local['on']:.3f} (calls/s), "
        f"{local['on'] - local['off']:+.1f} us per call"
    )
    if e2e is None:
        return
    print(f"\n{'server':8} {'req/s':>10} {'CPU us/call':>12}")
    for kind in SERVERS:
        print(f"{kind:8} {e2e[kind]['rps']:>10,.0f} {e2e[kind]['cpu_us']:>12.1f}")
    off = e2e["off"]
    for kind in ("on", "mp"):
        print(
            f"{kind} / off = {e2e[kind]['rps'] / off['rps']:.3f} (req/s), "
            f"CPU per call {e2e[kind]['cpu_us'] - off['cpu_us']:+.1f} us "
            f"({off['cpu_us'] / e2e[kind]['cpu_us']:.3f} by CPU)"
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
    parser.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the in-process workers measure off/on
    print(f"in process: {args.rounds} rounds of {args.batch} calls per app")
    local = alternate("metrics.py", {kind: (kind, None) for kind in APPS}, args.rounds, args.batch)
    e2e = None
    if not args.in_process_only:
        if not shutil.which("wrk"):
            raise SystemExit("wrk is missing: apt-get install wrk")
        print(f"end to end: {args.rounds} rounds x {args.seconds}s per server")
        with tempfile.TemporaryDirectory() as directory:
            e2e = end_to_end(args, Path(directory))
    report(e2e, local)


if __name__ == "__main__":
    main()
