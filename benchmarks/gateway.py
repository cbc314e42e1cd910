"""The API gateway in front of the greeter against calling the greeter directly, in one run.

    direct   POST /greeter/hello on the example greeter (``asgi-micro run``)
    gateway  POST /greeter/hello on ``asgi-micro api``, which finds the same greeter in the
             registry (mDNS on loopback, a domain of this run's own) and calls it
    httpx    the proxy a user would write instead: a bare ASGI app on uvicorn that sends the
             request to the greeter's address with one ``httpx.AsyncClient`` and returns the
             reply (no registry, routing, retries, deadline or edge checks)
    floor    the same bare proxy on asgi-micro's own HTTP/1.1 client (``HTTPTransport``): what
             any Python gateway on uvicorn pays for the second hop, before doing anything

The greeter and the gateway run in processes of their own, both pinned to core 0 (a request
through the gateway costs the CPU of both, which is what the comparison is about); wrk on
core 1 drives them in shuffled, interleaved rounds. Reported: median req/s, server CPU per
request (greeter + gateway, from /proc) and the ratio gateway/direct, which the issue wants
at 0.6x or more, and gateway/floor, the gateway's own share. The greeter and the gateway run
as a user runs them, so their start-up heaps are frozen (``asgi_micro.heap``);
``--no-gc-freeze`` runs both with ``MICRO_GC_FREEZE=false``. Everything stays on 127.0.0.1 and
every loop is bounded.

    uv run python benchmarks/gateway.py [--rounds 8] [--seconds 3] [--connections 64]
                                        [--no-gc-freeze]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import ROOT, cpu_seconds, free_port, wait_for_port

BODY = b'{"name": "Ada Lovelace"}'
PATH = "/greeter/hello"
TARGET = 0.6


def command(kind: str, port: int) -> list[str]:
    """How the server ``kind`` is started, pinned to core 0."""
    pinned = ["taskset", "-c", "0"]
    quiet = ["--port", str(port), "--log-level", "warning"]
    asgi_micro = str(Path(sys.executable).with_name("asgi-micro"))
    if kind == "greeter":
        return [*pinned, asgi_micro, "run", "example_apps/greeter/app.py", *quiet]
    if kind == "gateway":
        return [*pinned, asgi_micro, "api", *quiet]
    return [*pinned, sys.executable, __file__, "--serve", kind, "--port", str(port)]


def serve(kind: str, port: int) -> None:
    """A bare proxy of ``kind`` on plain uvicorn (uvloop, httptools)."""
    import uvicorn

    uvicorn.run(
        proxy(kind, int(os.environ["UPSTREAM_PORT"])),  # type: ignore[arg-type]
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


def proxy(kind: str, upstream: int) -> object:
    """A bare ASGI reverse proxy to the greeter on 127.0.0.1:``upstream``: the request's
    method, path, body and content type on, the reply's status, content type and body back."""
    import httpx

    from asgi_micro.client.http import HTTPTransport

    transport = HTTPTransport()
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{upstream}", trust_env=False)

    async def read(receive: Any) -> bytes:
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                return b"".join(chunks)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read(receive)
        content_type = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
        if kind == "floor":
            reply = await transport.request(
                "127.0.0.1", upstream, scope["method"], scope["path"],
                headers=[(b"content-type", content_type)], body=body, timeout=30,
            )  # fmt: skip
            status, reply_type, content = reply.status, reply.header(b"content-type"), reply.body
        else:
            answer = await client.request(
                scope["method"], scope["path"], content=body,
                headers={"content-type": content_type.decode("latin-1")},
            )  # fmt: skip
            status, content = answer.status_code, answer.content
            reply_type = answer.headers.get("content-type", "").encode("latin-1")
        headers = [(b"content-type", reply_type or b"application/octet-stream")]
        headers.append((b"content-length", str(len(content)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    return app


def run_wrk(script: str, port: int, seconds: int, connections: int) -> tuple[float, int]:
    output = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", script,
         f"http://127.0.0.1:{port}{PATH}"],
        capture_output=True, text=True, check=True, timeout=seconds + 30,
    ).stdout  # fmt: skip
    if "Non-2xx" in output:
        raise RuntimeError(f"errors during the run:\n{output}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    return rate, total


def wait_until_routed(port: int, timeout: float = 60.0) -> None:
    """The gateway answers 404 until the registry has shown it the greeter."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            reply = httpx.post(f"http://127.0.0.1:{port}{PATH}", content=BODY, trust_env=False)
            if reply.status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the gateway never routed to the greeter")


def end_to_end(
    rounds: int, seconds: int, connections: int, gc_freeze: bool
) -> dict[str, dict[str, float]]:
    if not shutil.which("wrk"):
        raise SystemExit("wrk is missing: apt-get install wrk")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\n'
            f"wrk.body = '{BODY.decode()}'\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
    env = dict(os.environ)
    env["MICRO_REGISTRY"] = f"mdns://?domain=b{secrets.token_hex(4)}"
    env["MICRO_STORE"] = "memory://"
    env["MICRO_GC_FREEZE"] = "true" if gc_freeze else "false"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    ports = {kind: free_port() for kind in ("greeter", "gateway", "httpx", "floor")}
    env["UPSTREAM_PORT"] = str(ports["greeter"])
    processes = {
        kind: subprocess.Popen(
            command(kind, port),
            stdout=subprocess.DEVNULL,
            env=env,
            cwd=ROOT,
        )
        for kind, port in ports.items()
    }
    try:
        for kind, port in ports.items():
            wait_for_port(port, processes[kind])
        wait_until_routed(ports["gateway"])
        runs = {
            "direct": ports["greeter"],
            **{kind: ports[kind] for kind in ports if kind != "greeter"},
        }
        for port in runs.values():  # warm up
            run_wrk(script.name, port, 1, connections)
        rates: dict[str, list[float]] = {name: [] for name in runs}
        cpu: dict[str, list[float]] = {name: [] for name in runs}
        pids = [process.pid for process in processes.values()]
        for round_number in range(rounds):
            order = list(runs)
            random.shuffle(order)
            for name in order:
                before = sum(cpu_seconds(pid) for pid in pids)
                rate, total = run_wrk(script.name, runs[name], seconds, connections)
                rates[name].append(rate)
                cpu[name].append((sum(cpu_seconds(pid) for pid in pids) - before) / total * 1e6)
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
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            process.wait(timeout=10)
        os.unlink(script.name)


def report(e2e: dict[str, dict[str, float]]) -> None:
    print("\nend to end over loopback (greeter and the proxy in front on core 0, wrk on core 1)")
    for name, row in e2e.items():
        print(
            f"  {name:<8} {row['rps']:10,.0f} req/s   {row['cpu_us']:7.1f} us CPU/request "
            "(greeter + what is in front)"
        )
    direct, gateway = e2e["direct"], e2e["gateway"]
    ratio = gateway["rps"] / direct["rps"]
    verdict = "meets" if ratio >= TARGET else "misses"
    print(
        f"  gateway/direct: {ratio:.3f}x req/s, {direct['cpu_us'] / gateway['cpu_us']:.3f}x "
        f"requests per CPU second ({verdict} the {TARGET}x target)"
    )
    for other in ("httpx", "floor"):
        print(
            f"  {other}/direct: {e2e[other]['rps'] / direct['rps']:.3f}x req/s;  "
            f"gateway/{other}: {gateway['rps'] / e2e[other]['rps']:.3f}x req/s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--serve", choices=["httpx", "floor"], help=argparse.SUPPRESS)
    parser.add_argument("--gc-freeze", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    print(
        f"end to end: {args.rounds} rounds x {args.seconds}s each, {args.connections} connections, "
        f"MICRO_GC_FREEZE={str(args.gc_freeze).lower()}"
    )
    report(end_to_end(args.rounds, args.seconds, args.connections, args.gc_freeze))


if __name__ == "__main__":
    main()
