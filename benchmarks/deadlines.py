"""What guarding a call with its deadline costs: the deadline clock against ``asyncio.timeout``.

A server runs every call that carries a deadline (``Micro-Timeout``, ``grpc-timeout``; the
client sends one on every call) under it. In process, on uvloop, in shuffled alternating
batches:

    none             within_deadline on a context without a deadline (the floor)
    asyncio.timeout  the same guard on ``asyncio.timeout(remaining)`` (the raw stack; what
                     asgi-micro did before its deadline clock)
    within_deadline  asgi-micro's guard: the loop's one timer for all calls (asgi_micro.deadlines)

and the same on a whole call: the example greeter's ``POST /greeter/hello`` through its ASGI
app, without and with a ``Micro-Timeout`` header. Reported: median microseconds per call and
what the deadline adds.

    uv run python benchmarks/deadlines.py [--rounds 15] [--batch 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvloop
from harness import in_turns

from asgi_micro import errors
from asgi_micro.context import Context, within_deadline

TIMEOUT = 30.0


async def handler() -> int:
    await asyncio.sleep(0)  # a handler that awaits something, as handlers do
    return 1


async def on_asyncio_timeout(context: Context, awaitable: Awaitable[Any]) -> Any:
    """The guard on ``asyncio.timeout``, as asgi-micro had it before its deadline clock: the
    same context made current, the same 408."""
    token = context.activate()
    try:
        deadline = asyncio.timeout(context.remaining())
        try:
            async with deadline:
                return await awaitable
        except TimeoutError:
            if deadline.expired():
                raise errors.Timeout("deadline exceeded") from None
            raise
    finally:
        Context.reset(token)


def guards() -> dict[str, Callable[[], Awaitable[Any]]]:
    """Each makes the context of a call (with a deadline or not) and runs a handler under it."""

    def guarded(guard: Callable[[Context, Awaitable[Any]], Awaitable[Any]], deadline: bool) -> Any:
        def call() -> Awaitable[Any]:
            context = Context(deadline=time.monotonic() + TIMEOUT if deadline else None)
            return guard(context, handler())

        return call

    return {
        "none": guarded(within_deadline, deadline=False),
        "asyncio.timeout": guarded(on_asyncio_timeout, deadline=True),
        "within_deadline": guarded(within_deadline, deadline=True),
    }


def greeter_calls() -> tuple[Any, dict[str, Callable[[], Awaitable[Any]]]]:
    os.environ.setdefault("MICRO_REGISTRY", "memory://")
    os.environ.setdefault("MICRO_STORE", "memory://")
    from example_apps.greeter.app import app, service

    body = b'{"name": "Ada Lovelace"}'
    plain = [(b"content-type", b"application/json"), (b"content-length", b"24")]
    timed = [*plain, (b"micro-timeout", str(int(TIMEOUT * 1000)).encode())]

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            raise RuntimeError(f"the greeter answered {message['status']}")

    def call(headers: list[tuple[bytes, bytes]]) -> Callable[[], Awaitable[Any]]:
        def one() -> Awaitable[Any]:
            scope = {
                "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                "method": "POST", "scheme": "http", "path": "/greeter/hello",
                "raw_path": b"/greeter/hello", "root_path": "", "query_string": b"",
                "headers": headers, "client": ("127.0.0.1", 5000),
                "server": ("127.0.0.1", 8000), "state": {},
            }  # fmt: skip
            return app(scope, receive, send)

        return one

    return service.lifespan(app), {
        "greeter": call(plain),
        "greeter + Micro-Timeout": call(timed),
    }


async def measure(rounds: int, batch: int) -> dict[str, float]:
    lifespan, calls = greeter_calls()
    async with lifespan:
        runs = {**guards(), **calls}
        for run in runs.values():  # warm up
            for _ in range(batch // 10):
                await run()
        return await in_turns(runs, rounds, batch)


def report(us: dict[str, float]) -> None:
    print("in process, uvloop: median us per call")
    for name, value in us.items():
        print(f"  {name:<24} {value:8.2f}")
    floor = us["none"]
    print(
        f"  a deadline adds {us['asyncio.timeout'] - floor:.2f} us with asyncio.timeout, "
        f"{us['within_deadline'] - floor:.2f} us with within_deadline "
        f"({(us['asyncio.timeout'] - floor) / max(us['within_deadline'] - floor, 1e-9):.1f}x less)"
    )
    added = us["greeter + Micro-Timeout"] - us["greeter"]
    print(
        f"  on the greeter's call: +{added:.2f} us "
        f"({us['greeter + Micro-Timeout'] / us['greeter']:.3f}x the call without a deadline)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch", type=int, default=5000)
    args = parser.parse_args()
    report(uvloop.run(measure(args.rounds, args.batch)))


if __name__ == "__main__":
    main()
