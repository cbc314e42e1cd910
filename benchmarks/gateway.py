"""The API gateway in front of the greeter against calling the greeter directly, in one run.

    direct   POST /greeter/hello on the example greeter (uvicorn, uvloop, httptools)
    gateway  POST /greeter/hello on ``asgi-micro api``'s app, which finds the same greeter in
             the registry (mDNS on loopback, a domain of this run's own) and calls it

The greeter and the gateway run in processes of their own, both pinned to core 0 (a request
through the gateway costs the CPU of both, which is what the comparison is about); wrk on
core 1 drives them in shuffled, interleaved rounds. Reported: median req/s, server CPU per
request (greeter + gateway, from /proc) and the ratio gateway/direct, which the issue wants
at 0.6x or more. Everything stays on 127.0.0.1 and every loop is bounded.

    uv run python benchmarks/gateway.py [--rounds 8] [--seconds 3] [--connections 64]
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

from harness import ROOT, cpu_seconds, free_port, wait_for_port

BODY = b'{"name": "Ada Lovelace"}'
PATH = "/greeter/hello"
TARGET = 0.6


def serve(kind: str, port: int) -> None:
    import uvicorn

    if kind == "greeter":
        os.environ["MICRO_ADDRESS"] = f"127.0.0.1:{port}"
        app: object = "example_apps.greeter.app:app"
    else:
        from asgi_micro.gateway.api import gateway
        from asgi_micro.registry import from_url

        app = gateway(registry=from_url(os.environ["MICRO_REGISTRY"]))
    uvicorn.run(
        app,  # type: ignore[arg-type]
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


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


def end_to_end(rounds: int, seconds: int, connections: int) -> dict[str, dict[str, float]]:
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
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    ports = {"greeter": free_port(), "gateway": free_port()}
    processes = {
        kind: subprocess.Popen(
            ["taskset", "-c", "0", sys.executable, __file__, "--serve", kind, "--port", str(port)],
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
        runs = {"direct": ports["greeter"], "gateway": ports["gateway"]}
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
    print("\nend to end over loopback (greeter and gateway on core 0, wrk on core 1)")
    for name, row in e2e.items():
        print(
            f"  {name:<8} {row['rps']:10,.0f} req/s   {row['cpu_us']:7.1f} us CPU/request "
            "(greeter + gateway)"
        )
    ratio = e2e["gateway"]["rps"] / e2e["direct"]["rps"]
    cpu_ratio = e2e["direct"]["cpu_us"] / e2e["gateway"]["cpu_us"]
    verdict = "meets" if ratio >= TARGET else "misses"
    print(
        f"  gateway/direct: {ratio:.3f}x req/s, {cpu_ratio:.3f}x requests per CPU second "
        f"({verdict} the {TARGET}x target)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--serve", choices=["greeter", "gateway"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    print(
        f"end to end: {args.rounds} rounds x {args.seconds}s each, {args.connections} connections"
    )
    report(end_to_end(args.rounds, args.seconds, args.connections))


if __name__ == "__main__":
    main()
