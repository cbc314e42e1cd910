"""Auth's cost per call: the same echo RPC with auth on (a valid token, one rule) and off.

Four servers, each in its own process pinned to core 0, side by side:

    http-off  the echo RPC over HTTP, auth off (``noop://``)
    http-on   the same with auth on: ``jwt://`` with its own key ring, one rule granting the
              scope ``bench`` every endpoint, every request carrying a valid token of an
              account with that scope (verified once, then cached until it expires)
    grpc-off  the echo RPC over gRPC (the service's gRPC server), auth off
    grpc-on   the same with auth on

Every request to every server carries the same ``Authorization`` header, so both sides read
the same bytes. wrk (HTTP) and h2load (gRPC) on core 1 drive them in shuffled, interleaved
rounds. h2load sees HTTP statuses only (a refused gRPC call is a 200 with a status in its
trailers), so each server counts the calls its handler ran, and the run fails unless every
call the load generator saw done reached the handler. Reported: median req/s, server CPU per
call (from /proc) and the ratios on/off. Everything stays on 127.0.0.1; every loop is bounded.

    uv run python benchmarks/auth_rpc.py [--rounds 6] [--seconds 3] [--connections 64]
"""

from __future__ import annotations

import argparse
import contextlib
import random
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from grpc_rpc import PERSON, Person, generate, run_h2load
from harness import ROOT, cpu_seconds, free_port, python_in, wait_for_port
from http_rpc import BODY, run_wrk
from pydantic import BaseModel

from asgi_micro import MicroRouter, Service
from asgi_micro.auth import Account, KeyRing, Resource, Rule
from asgi_micro.auth.jwt import JWTAuth
from asgi_micro.registry.memory import MemoryRegistry

SERVERS = ("http-off", "http-on", "grpc-off", "grpc-on")
HTTP_PATH = "/echo/echo"
COUNT_PATH = "/echo/count"


class Calls(BaseModel):
    calls: int


def app(*, on: bool, keys: Path, http_port: int, grpc_port: int) -> FastAPI:
    router = MicroRouter("Echo")
    calls = 0

    @router.rpc(name="Echo")
    async def echo(person: Person) -> Person:
        nonlocal calls
        calls += 1
        return person

    @router.rpc()
    async def count(person: Person) -> Calls:
        return Calls(calls=calls)

    service = Service(
        "bench",
        registry=MemoryRegistry(),
        store="memory://",
        broker="memory://",
        auth=f"jwt://?keys={keys}" if on else "noop://",
        address=f"127.0.0.1:{http_port}",
        grpc_address=f"127.0.0.1:{grpc_port}",
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
        async with service.lifespan(app) as state:
            if on:
                await service.auth.grant(Rule("bench", "bench", Resource("service", "bench", "*")))
                await service.guard.load_rules()
            yield state

    application = FastAPI(lifespan=lifespan)
    application.include_router(router)
    return application


def serve(kind: str, http_port: int, grpc_port: int, keys: Path) -> None:
    import uvicorn

    uvicorn.run(
        app(on=kind.endswith("-on"), keys=keys, http_port=http_port, grpc_port=grpc_port),
        host="127.0.0.1",
        port=http_port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


def handled(http_port: int, token: str) -> int:
    """How many echo calls the server's handler ran."""
    reply = httpx.post(
        f"http://127.0.0.1:{http_port}{COUNT_PATH}",
        json=PERSON.model_dump(),
        headers={"authorization": f"Bearer {token}"},
        timeout=10,
    )
    reply.raise_for_status()
    return int(reply.json()["calls"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--serve", choices=SERVERS)
    parser.add_argument("--port", type=int)
    parser.add_argument("--grpc-port", type=int)
    parser.add_argument("--keys", type=Path)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.grpc_port, args.keys)
        return
    for tool, package in (("wrk", "wrk"), ("h2load", "nghttp2-client")):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: apt-get install {package}")
    with tempfile.TemporaryDirectory() as directory:
        results = run(Path(directory), args)
    report(results)


def run(directory: Path, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    keys = directory / "keys.json"
    token = JWTAuth(keys=KeyRing(keys)).issue(Account("bench", scopes=("bench",)), expiry=3600)
    header = f"authorization: Bearer {token}"
    script = directory / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = '{BODY.decode()}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {token}"\n'
    )
    messages, _ = generate(directory)
    payload = messages.Person(**PERSON.model_dump()).SerializeToString()
    data = directory / "request.bin"
    data.write_bytes(b"\x00" + len(payload).to_bytes(4, "big") + payload)
    servers: dict[str, tuple[subprocess.Popen[bytes], int, int]] = {}
    python, env = python_in(None)
    try:
        for kind in SERVERS:
            http_port, grpc_port = free_port(), free_port()
            command = [*python, str(ROOT / "benchmarks" / "auth_rpc.py"), "--serve", kind]
            command += [
                "--port",
                str(http_port),
                "--grpc-port",
                str(grpc_port),
                "--keys",
                str(keys),
            ]
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
                grpc_port, str(data), seconds, args.clients, args.streams, headers=[header]
            )

        for kind in SERVERS:
            load(kind, 1)  # warm up
        rates: dict[str, list[float]] = {kind: [] for kind in SERVERS}
        cpu: dict[str, list[float]] = {kind: [] for kind in SERVERS}
        done = dict.fromkeys(SERVERS, 0)
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
            print(
                f"  round {round_number + 1}/{args.rounds}: "
                + ", ".join(f"{kind} {rates[kind][-1]:,.0f}" for kind in SERVERS),
                flush=True,
            )
        for kind, (_, http_port, _) in servers.items():
            ran = handled(http_port, token)
            if ran < done[kind]:
                raise RuntimeError(
                    f"{kind}: the load generator saw {done[kind]} calls done, the handler ran "
                    f"{ran}: calls were refused"
                )
    finally:
        for process, _, _ in servers.values():
            process.terminate()
        for process, _, _ in servers.values():
            process.wait(timeout=15)
    return {
        kind: {"rps": statistics.median(rates[kind]), "cpu_us": statistics.median(cpu[kind])}
        for kind in SERVERS
    }


def report(results: dict[str, dict[str, float]]) -> None:
    print(f"\n{'server':10} {'req/s':>10} {'CPU us/call':>12}")
    for kind in SERVERS:
        print(f"{kind:10} {results[kind]['rps']:>10,.0f} {results[kind]['cpu_us']:>12.1f}")
    for transport in ("http", "grpc"):
        on, off = results[f"{transport}-on"], results[f"{transport}-off"]
        print(
            f"{transport}: auth on / off = {on['rps'] / off['rps']:.3f} (req/s), "
            f"CPU per call {on['cpu_us'] - off['cpu_us']:+.1f} us"
        )


if __name__ == "__main__":
    main()
