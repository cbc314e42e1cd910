"""An in-process call against the same call over loopback HTTP and gRPC, same run.

    python benchmarks/local.py [--rounds 7] [--calls 2000]

The example greeter (``example_apps/greeter/app.py``'s ``Greeter.Hello``: a pydantic request,
the ``Context`` dependency, a pydantic reply) serves on uvicorn in this process, registered in
a ``memory://`` registry; a second service's client calls it by name through
``service.client.call`` three ways:

- ``local``: in process (``asgi_micro.local``): the request copied and validated, the
  greeter's pipeline, the reply copied; no socket, no codec;
- ``http``: ``Client(local=False)``, JSON over loopback HTTP/1.1 (the node's server runs on the
  same event loop, so a call's time is the client's and the server's work together);
- ``grpc``: the same over gRPC (``transport="grpc"``).

Each round times ``--calls`` sequential calls of each way in shuffled order; figures are the
medians over rounds, in microseconds per call, with ratios against ``local``. The issue's bar:
in-process at least 10x faster than loopback HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MICRO_STORE", "memory://")
os.environ.setdefault("MICRO_METRICS", "false")

import uvicorn
from harness import in_turns

from asgi_micro import Service
from asgi_micro.client import Client
from asgi_micro.testing import free_port


async def main(rounds: int, calls: int) -> None:
    registry = f"memory://bench-{uuid.uuid4()}"
    os.environ["MICRO_REGISTRY"] = registry
    from example_apps.greeter.app import app, service

    port = free_port()
    service.address = f"127.0.0.1:{port}"
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="warning")
    )
    serving = asyncio.create_task(server.serve())
    caller = Service("bench-caller", registry=registry)
    await caller.start()
    here = Client(registry=caller.registry, caller="bench-caller", local=True)
    there = Client(registry=caller.registry, caller="bench-caller", local=False)
    request = {"name": "Ada"}
    ways: dict[str, Callable[[], Awaitable[Any]]] = {
        "local": lambda: here.call("greeter", "Greeter.Hello", request),
        "http": lambda: there.call("greeter", "Greeter.Hello", request),
        "grpc": lambda: there.call("greeter", "Greeter.Hello", request, transport="grpc"),
    }
    try:
        await service.wait_registered()
        for call in ways.values():  # warm: connections, channels, caches
            for _ in range(200):
                assert (await call())["message"] == "Hello Ada"
        medians = await in_turns(ways, rounds, calls)
    finally:
        await here.aclose()
        await there.aclose()
        await caller.stop()
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await serving
    print(f"Greeter.Hello, {calls} sequential calls x {rounds} rounds, medians:")
    for way, micros in medians.items():
        print(f"  {way:6} {micros:8.1f} us/call  {1e6 / micros:9.0f} calls/s")
    for way in ("http", "grpc"):
        print(f"  local is {medians[way] / medians['local']:.1f}x faster than {way}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.rounds, arguments.calls))
