"""Times in-process batches of a benchmark for another process (``harness.Worker``).

    python benchmarks/worker.py <tree>/benchmarks/http_rpc.py
    python benchmarks/worker.py <tree>/benchmarks/grpc_rpc.py

It imports the script (and through it that tree's ``asgi_micro``, on ``PYTHONPATH``), builds
what the script compares (the ASGI apps of ``http_rpc``, with their lifespans running; the
method handlers of ``grpc_rpc``), and answers each line ``kind calls`` on stdin with the
microseconds per call of one batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

Batch = Callable[[str, int], Awaitable[float]]


def load(path: Path) -> Any:
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


@contextlib.asynccontextmanager
async def http_batches(script: Any) -> Any:
    apps = {kind: factory() for kind, factory in script.APPS.items()}
    async with contextlib.AsyncExitStack() as stack:
        states = {
            kind: (await stack.enter_async_context(script.Lifespan(app))).state
            for kind, app in apps.items()
        }
        for kind, app in apps.items():  # warm caches
            await script.call_in_process(app, script.PATHS[kind], 200, states[kind])

        async def batch(kind: str, calls: int) -> float:
            us: float = await script.call_in_process(
                apps[kind], script.PATHS[kind], calls, states[kind]
            )
            return us

        yield batch


@contextlib.asynccontextmanager
async def grpc_batches(script: Any) -> Any:
    """The handler layer of each server, as ``grpc_rpc``'s own in-process run builds it."""
    from asgi_micro.grpc import grpc_schema
    from asgi_micro.grpc.handlers import method_handler

    with tempfile.TemporaryDirectory() as directory:
        messages, services = script.generate(Path(directory))
    data = messages.Person(**script.PERSON.model_dump()).SerializeToString()
    servicer = script.baseline_servicer(services)
    from_string = messages.Person.FromString

    async def baseline(data: bytes, call: Any) -> bytes:
        reply: bytes = (await servicer.Echo(from_string(data), call)).SerializeToString()
        return reply

    app, service = script.micro_app()
    if hasattr(service, "pipeline"):
        service.pipeline.frozen = True  # as once the service serves
    schema = grpc_schema(app, package=script.PACKAGE)
    rpc = schema.methods["Echo.Echo"].rpc
    shared = method_handler(
        rpc, service, schema.proto.converter(rpc.request), schema.proto.converter(rpc.response)
    ).unary_unary
    handlers = {"a": baseline, "b": shared, "c": script.floor_handler(messages)}
    call = script.Call()
    for handler in handlers.values():
        if await handler(data, call) != data:
            raise RuntimeError("the handlers do not echo")

    async def batch(kind: str, calls: int) -> float:
        handler = handlers[kind]
        started = time.perf_counter()
        for _ in range(calls):
            await handler(data, call)
        return (time.perf_counter() - started) / calls * 1e6

    yield batch


async def main(path: Path) -> None:
    script = load(path)
    batches = grpc_batches if hasattr(script, "floor_handler") else http_batches
    loop = asyncio.get_running_loop()
    async with batches(script) as batch:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            kind, calls = line.split()
            sys.stdout.write(f"{await batch(kind, int(calls))}\n")
            sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
