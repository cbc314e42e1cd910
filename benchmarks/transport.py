"""HTTP client transports against one Starlette echo endpoint: req/s and client CPU per request.

    python benchmarks/transport.py [--rounds 6] [--seconds 2] [--concurrency 1 64]

A Starlette endpoint (POST echo of a ~100-byte JSON body; uvicorn with uvloop and httptools) runs
in a subprocess pinned to core 0; this process, pinned to core 1, drives each client in turn:

- ``aiohttp``: a raw ``aiohttp.ClientSession`` (the baseline the RPC client must approach);
- ``httpx``: a raw ``httpx.AsyncClient`` (the baseline ``service.http()`` must beat 5x);
- ``transport``: ``asgi_micro.client.http.HTTPTransport.request``;
- ``httpx+pooled``: ``httpx.AsyncClient`` over ``asgi_micro.client.httpx_transport.PooledTransport``.

Rounds are short and interleaved in shuffled order so drift hits every client alike; each client
is created fresh per run and warmed up before it is measured. Every figure is a median over rounds;
CPU is this process's user+system time divided by the requests it completed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import orjson
from harness import HOST, cpu_seconds, free_port, wait_for_port

BODY = orjson.dumps(
    {
        "name": "Ada Lovelace",
        "message": "The Analytical Engine weaves algebraic patterns",
        "count": 42,
        "tags": ["a", "b"],
    }
)
HEADERS = {"content-type": "application/json"}
WARMUP = 0.3

Send = Callable[[], Awaitable[None]]
Client = Callable[[int], AbstractAsyncContextManager[Send]]


def serve(port: int) -> None:
    """The server process: Starlette + orjson echo, as in BENCHMARKING.md's reference app."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def echo(request: Request) -> Response:
        return Response(
            orjson.dumps(orjson.loads(await request.body())), media_type="application/json"
        )

    app = Starlette(routes=[Route("/echo", echo, methods=["POST"])])
    uvicorn.run(
        app,
        host=HOST,
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


def check(status: int, body: bytes) -> None:
    if status != 200 or body != BODY:
        raise RuntimeError(f"unexpected response {status}: {body[:80]!r}")


@asynccontextmanager
async def aiohttp_client(port: int) -> AsyncIterator[Send]:
    import aiohttp

    url = f"http://{HOST}:{port}/echo"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:

        async def send() -> None:
            async with session.post(url, data=BODY, headers=HEADERS) as response:
                check(response.status, await response.read())

        yield send


@asynccontextmanager
async def httpx_client(port: int) -> AsyncIterator[Send]:
    import httpx

    url = f"http://{HOST}:{port}/echo"
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(limits=limits) as client:

        async def send() -> None:
            response = await client.post(url, content=BODY, headers=HEADERS)
            check(response.status_code, response.content)

        yield send


@asynccontextmanager
async def transport_client(port: int) -> AsyncIterator[Send]:
    from asgi_micro.client.http import HTTPTransport

    headers = [(b"content-type", b"application/json")]
    async with HTTPTransport() as transport:

        async def send() -> None:
            response = await transport.request(
                HOST, port, "POST", "/echo", headers=headers, body=BODY, timeout=5.0
            )
            check(response.status, response.body)

        yield send


@asynccontextmanager
async def pooled_httpx_client(port: int) -> AsyncIterator[Send]:
    import httpx

    from asgi_micro.client.httpx_transport import PooledTransport

    url = f"http://{HOST}:{port}/echo"
    async with httpx.AsyncClient(transport=PooledTransport()) as client:

        async def send() -> None:
            response = await client.post(url, content=BODY, headers=HEADERS)
            check(response.status_code, response.content)

        yield send


CLIENTS: dict[str, Client] = {
    "aiohttp": aiohttp_client,
    "httpx": httpx_client,
    "transport": transport_client,
    "httpx+pooled": pooled_httpx_client,
}


async def load(send: Send, concurrency: int, seconds: float) -> int:
    """Requests completed by ``concurrency`` workers looping until ``seconds`` have passed."""
    done = 0
    end = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < end:
            await send()
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


async def measure(
    client: Client, port: int, concurrency: int, seconds: float, server_pid: int
) -> tuple[float, float, float]:
    """req/s, client CPU us/request, server CPU us/request for one short run."""
    async with client(port) as send:
        await load(send, concurrency, WARMUP)
        cpu, server_cpu, start = cpu_seconds(), cpu_seconds(server_pid), time.perf_counter()
        count = await load(send, concurrency, seconds)
        elapsed = time.perf_counter() - start
        cpu, server_cpu = cpu_seconds() - cpu, cpu_seconds(server_pid) - server_cpu
    return count / elapsed, cpu / count * 1e6, server_cpu / count * 1e6


async def run(args: argparse.Namespace, port: int, server_pid: int) -> None:
    runs = [(name, concurrency) for name in args.clients for concurrency in args.concurrency]
    results: dict[tuple[str, int], list[tuple[float, float, float]]] = {key: [] for key in runs}
    started = time.monotonic()
    for round_number in range(args.rounds):
        random.shuffle(runs)
        for name, concurrency in runs:
            results[name, concurrency].append(
                await measure(CLIENTS[name], port, concurrency, args.seconds, server_pid)
            )
        print(
            f"round {round_number + 1}/{args.rounds} done ({time.monotonic() - started:.0f}s)",
            file=sys.stderr,
        )

    print(
        f"\n{args.rounds} rounds x {args.seconds}s per client and concurrency, medians; client pinned to core 1, server to core 0\n"
    )
    print(
        f"{'client':<14}{'conc':>5}{'req/s':>10}{'client us/req':>15}{'server us/req':>15}{'vs aiohttp':>12}{'vs httpx':>10}{'cpu vs aiohttp':>16}"
    )
    for concurrency in args.concurrency:
        medians = {
            name: tuple(
                statistics.median(run[i] for run in results[name, concurrency]) for i in range(3)
            )
            for name in args.clients
        }
        for name in args.clients:
            rate, cpu, server_cpu = medians[name]
            vs_aiohttp = f"{rate / medians['aiohttp'][0]:.2f}x" if "aiohttp" in medians else "-"
            vs_httpx = f"{rate / medians['httpx'][0]:.2f}x" if "httpx" in medians else "-"
            cpu_ratio = f"{cpu / medians['aiohttp'][1]:.2f}x" if "aiohttp" in medians else "-"
            print(
                f"{name:<14}{concurrency:>5}{rate:>10.0f}{cpu:>15.1f}{server_cpu:>15.1f}{vs_aiohttp:>12}{vs_httpx:>10}{cpu_ratio:>16}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--clients", nargs="+", choices=list(CLIENTS), default=list(CLIENTS))
    parser.add_argument(
        "--loop", choices=["uvloop", "asyncio"], default="uvloop", help="the client's event loop"
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return

    port = free_port()
    server = subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, __file__, "--serve", str(port)]
    )
    try:
        os.sched_setaffinity(0, {1})
        wait_for_port(port, server)
        if args.loop == "uvloop":
            import uvloop

            uvloop.run(run(args, port, server.pid))
        else:
            asyncio.run(run(args, port, server.pid))
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
