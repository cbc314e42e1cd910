"""gRPC RPC overhead: asgi-micro's shared handler against a hand-written grpc.aio servicer.

Both serve the same echo of a ~60-byte message over gRPC:

    a  a hand-written grpc.aio servicer on code grpcio-tools generated (the baseline)
    b  asgi-micro: the same echo as an ``@router.rpc()`` handler, served by the service's gRPC
       server (the handler that also answers HTTP)
    c  the floor: a hand-written grpc.aio handler doing the least any handler on pydantic
       models must add to a: the request's fields into the model (not even validated) and the
       model's fields into a reply message; no context, statistics, checks or error handling

The ``.proto`` the baseline is generated from is the one ``asgi-micro proto`` prints for app b,
so both serve ``/bench.Echo/Echo`` with identical messages. End to end: each server runs in its
own process under uvloop (b inside uvicorn, as ``asgi-micro run`` runs it), both pinned to core 0,
side by side; h2load (nghttp2-client) on core 1 drives them in shuffled, interleaved rounds with
one length-prefixed message. Reported: median req/s, server CPU per call (from /proc) and the
ratio b/a. h2load counts HTTP statuses only, so both servers are checked with a real gRPC call
before and after the load. In process: the per-call work of each handler layer (decoding,
calling, encoding; no sockets, no grpc core) in alternating batches. Everything stays on
127.0.0.1 and every loop is bounded.

    uv run python benchmarks/grpc_rpc.py [--rounds 8] [--seconds 3] [--clients 4] [--streams 16]
                                         [--against REF]

``--against REF`` serves b of another revision (a git ref) beside the others, in the same
rounds, and prints this revision's b over that one's. The service runs as ``asgi-micro run``
runs it, with its start-up heap frozen (``MICRO_GC_FREEZE=true``); ``--no-gc-freeze``: not.
"""

from __future__ import annotations

import argparse
import importlib
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
from fastapi import FastAPI
from grpc_tools import protoc
from harness import ROOT, alternate, checkout, cpu_seconds, free_port, python_in, wait_for_port
from pydantic import BaseModel

from asgi_micro import MicroRouter, Service
from asgi_micro.grpc import grpc_schema
from asgi_micro.protobuf import render_proto
from asgi_micro.registry.memory import MemoryRegistry

PACKAGE = "bench"
METHOD = f"/{PACKAGE}.Echo/Echo"
LABELS = {
    "a": "hand-written grpc.aio servicer",
    "b": "asgi-micro shared handler",
    "c": "floor: model in, model out",
}


class Person(BaseModel):
    name: str
    age: int
    tags: list[str]
    active: bool
    score: float


PERSON = Person(
    name="Ada Lovelace", age=36, tags=["mathematics", "computing"], active=True, score=9.5
)


def micro_app(*, http_port: int = 1, grpc_port: int = 0) -> tuple[FastAPI, Service]:
    router = MicroRouter("Echo")

    @router.rpc(name="Echo")
    async def echo(person: Person) -> Person:
        return person

    service = Service(
        PACKAGE,
        registry=MemoryRegistry(),
        store="memory://",
        address=f"127.0.0.1:{http_port}",
        grpc_address=f"127.0.0.1:{grpc_port}",
    )
    app = FastAPI(lifespan=service.lifespan)
    app.include_router(router)
    return app, service


def generate(directory: Path) -> tuple[ModuleType, ModuleType]:
    """The baseline's ``_pb2`` and ``_pb2_grpc`` modules, from the .proto of app b."""
    app, _ = micro_app()
    schema = grpc_schema(app, package=PACKAGE).proto
    source = directory / "proto"
    source.mkdir(parents=True, exist_ok=True)
    (source / schema.file_name).write_text(render_proto(schema), encoding="utf-8")
    include = resources.files("grpc_tools") / "_proto"
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"--proto_path={source}",
            f"--proto_path={include}",
            f"--python_out={directory}",
            f"--grpc_python_out={directory}",
            schema.file_name,
        ]
    )
    if code != 0:
        raise RuntimeError("protoc failed")
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    importlib.invalidate_caches()
    return importlib.import_module(f"{PACKAGE}_pb2"), importlib.import_module(f"{PACKAGE}_pb2_grpc")


def baseline_servicer(services: ModuleType) -> Any:
    class EchoServicer(services.EchoServicer):  # type: ignore[misc,name-defined]
        async def Echo(self, request: Any, context: Any) -> Any:
            return request

    return EchoServicer()


def floor_handler(messages: ModuleType) -> Any:
    """Server c's handler: what a has to do more once the handler takes and returns a model."""
    message_class = messages.Person
    from_string = message_class.FromString
    new, set_slot = object.__new__, object.__setattr__

    async def echo(person: Person) -> Person:
        return person

    async def handler(data: bytes, call: Any) -> bytes:
        message = from_string(data)
        person = new(Person)
        set_slot(
            person,
            "__dict__",
            {
                "name": message.name,
                "age": message.age,
                "tags": message.tags[:],
                "active": message.active,
                "score": message.score,
            },
        )
        set_slot(person, "__pydantic_fields_set__", {"name", "age", "tags", "active", "score"})
        set_slot(person, "__pydantic_extra__", None)
        set_slot(person, "__pydantic_private__", None)
        reply: bytes = message_class(**(await echo(person)).__dict__).SerializeToString()
        return reply

    return handler


# -- servers (child processes) ----------------------------------------------------------------


def serve(kind: str, port: int, generated: Path) -> None:
    import uvloop

    if kind in ("a", "c"):
        sys.path.insert(0, str(generated))
        services = importlib.import_module(f"{PACKAGE}_pb2_grpc")
        messages = importlib.import_module(f"{PACKAGE}_pb2")

        async def main() -> None:
            server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
            if kind == "a":
                services.add_EchoServicer_to_server(baseline_servicer(services), server)
            else:
                method = grpc.unary_unary_rpc_method_handler(floor_handler(messages))
                server.add_generic_rpc_handlers(
                    (grpc.method_handlers_generic_handler(f"{PACKAGE}.Echo", {"Echo": method}),)
                )
            server.add_insecure_port(f"127.0.0.1:{port}")
            await server.start()
            await server.wait_for_termination()

        uvloop.run(main())
        return
    import uvicorn

    http_port = free_port()
    app, _ = micro_app(http_port=http_port, grpc_port=port)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=http_port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


def check_echo(port: int, messages: ModuleType, timeout: float = 20.0) -> None:
    """Wait for the server, then call it for real: h2load cannot see a gRPC status."""
    request = messages.Person(**PERSON.model_dump())
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        echo = channel.unary_unary(
            METHOD,
            request_serializer=messages.Person.SerializeToString,
            response_deserializer=messages.Person.FromString,
        )
        while True:
            try:
                reply = echo(request, timeout=2)
                break
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    if reply != request:
        raise RuntimeError(f"port {port} echoed {reply} for {request}")


def run_h2load(
    port: int,
    data: str,
    seconds: int,
    clients: int,
    streams: int,
    headers: list[str] | tuple[str, ...] = (),
) -> tuple[float, int]:
    extra = [option for header in headers for option in ("-H", header)]
    output = subprocess.run(
        [
            "taskset",
            "-c",
            "1",
            "h2load",
            "-t1",
            f"-c{clients}",
            f"-m{streams}",
            f"-D{seconds}",
            "-d",
            data,
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            *extra,
            f"http://127.0.0.1:{port}{METHOD}",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
    ).stdout
    rate = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", output).group(1))  # type: ignore[union-attr]
    counts = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", output)
    if counts is None or counts.group(2) != counts.group(3):
        raise RuntimeError(f"failed requests during the run:\n{output}")
    return rate, int(counts.group(2))


def end_to_end(
    rounds: int, seconds: int, clients: int, streams: int, tree: Path | None = None
) -> dict[str, dict[str, float]]:
    if not shutil.which("h2load"):
        raise SystemExit("h2load is missing: apt-get install nghttp2-client")
    with tempfile.TemporaryDirectory() as directory:
        generated = Path(directory)
        messages, _ = generate(generated)
        payload = messages.Person(**PERSON.model_dump()).SerializeToString()
        data = generated / "request.bin"
        data.write_bytes(b"\x00" + len(payload).to_bytes(4, "big") + payload)
        servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        # With --against, b of the other revision too, as "b@".
        runs = {kind: (kind, None) for kind in LABELS}
        if tree is not None:
            runs["b@"] = ("b", tree)
        try:
            for kind, (served, source) in runs.items():
                port = free_port()
                python, env = python_in(source)
                script = (source or ROOT) / "benchmarks" / "grpc_rpc.py"
                command = [*python, str(script), "--serve", served, "--port", str(port)]
                command += ["--generated", str(generated)]
                process = subprocess.Popen(["taskset", "-c", "0", *command], env=env)
                servers[kind] = (process, port)
            for process, port in servers.values():
                wait_for_port(port, process)  # a slow start would outlast gRPC's reconnect backoff
                check_echo(port, messages)
                run_h2load(port, str(data), 1, clients, streams)  # warm up
            rates: dict[str, list[float]] = {kind: [] for kind in runs}
            cpu: dict[str, list[float]] = {kind: [] for kind in runs}
            for round_number in range(rounds):
                order = list(runs)
                random.shuffle(order)
                for kind in order:
                    process, port = servers[kind]
                    before = cpu_seconds(process.pid)
                    rate, done = run_h2load(port, str(data), seconds, clients, streams)
                    rates[kind].append(rate)
                    cpu[kind].append((cpu_seconds(process.pid) - before) / done * 1e6)
                print(
                    f"  round {round_number + 1}/{rounds}: "
                    + ", ".join(f"{kind} {rates[kind][-1]:,.0f}" for kind in runs),
                    flush=True,
                )
            for process, port in servers.values():
                wait_for_port(port, process)  # a slow start would outlast gRPC's reconnect backoff
                check_echo(port, messages)
        finally:
            for process, _ in servers.values():
                process.terminate()
            for process, _ in servers.values():
                process.wait(timeout=15)
    return {
        kind: {"rps": statistics.median(rates[kind]), "cpu_us": statistics.median(cpu[kind])}
        for kind in rates
    }


# -- in process -------------------------------------------------------------------------------


class Call:
    """What a handler sees of grpc.aio's servicer context, as on a call without metadata."""

    _metadata = (("user-agent", "grpc-c/58.0.0 (linux; chttp2)"),)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        return None

    def set_code(self, code: Any) -> None:
        raise RuntimeError(f"the call failed: {code}")

    set_details = set_trailing_metadata = set_code


def in_process(rounds: int, batch: int, tree: Path | None = None) -> dict[str, float]:
    """The handler layer of each server (and with ``--against``, b of the other revision as
    ``b@``), timed in worker processes on one core, batches alternating in shuffled order."""
    runs: dict[str, tuple[str, Path | None]] = {kind: (kind, None) for kind in LABELS}
    if tree is not None:
        runs["b@"] = ("b", tree)
    return alternate("grpc_rpc.py", runs, rounds, batch)


# -- report ------------------------------------------------------------------------------------


def report(
    e2e: dict[str, dict[str, float]] | None, local: dict[str, float], ref: str | None = None
) -> None:
    print("\nin process: the handler layer alone (us per call; median of alternating batches)")
    for kind, us in local.items():
        label = LABELS.get(kind) or f"{LABELS[kind[:-1]]} @ {ref}"
        print(f"  {kind:<3} {label:<40} {us:7.2f} us")
    print(
        f"  added by asgi-micro: {local['b'] - local['a']:.2f} us per call "
        f"(by the floor: {local['c'] - local['a']:.2f} us)"
        + (f"; at {ref}: {local['b@'] - local['a']:.2f} us" if "b@" in local else "")
    )
    if e2e is None:
        return
    print("\nend to end over loopback (servers on core 0 under uvloop, h2load on core 1)")
    for kind, row in e2e.items():
        label = LABELS.get(kind) or f"{LABELS[kind[:-1]]} @ {ref}"
        print(
            f"  {kind:<3} {label:<40} {row['rps']:10,.0f} req/s   {row['cpu_us']:6.1f} us CPU/call"
        )
    pairs = [("b", "a"), ("c", "a"), ("b", "c")]
    if "b@" in e2e:
        pairs += [("b@", "a"), ("b", "b@")]
    for top, bottom in pairs:
        print(
            f"  ratio {top}/{bottom}: {e2e[top]['rps'] / e2e[bottom]['rps']:.3f}x req/s, "
            f"{e2e[bottom]['cpu_us'] / e2e[top]['cpu_us']:.3f}x calls per CPU second"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4, help="h2load connections")
    parser.add_argument("--streams", type=int, default=16, help="concurrent streams each")
    parser.add_argument("--batch", type=int, default=5000, help="calls per in-process batch")
    parser.add_argument("--in-process-only", action="store_true")
    parser.add_argument("--against", metavar="REF", help="also serve b of this git ref")
    parser.add_argument("--serve", choices=sorted(LABELS), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--generated", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--gc-freeze", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    # Services run as ``asgi-micro run`` runs them: each freezes the heap once started
    os.environ["MICRO_GC_FREEZE"] = "true" if args.gc_freeze else "false"
    if args.serve:
        serve(args.serve, args.port, args.generated)
        return
    e2e = None
    with checkout(args.against) as tree:
        print(f"in process: {args.rounds} rounds of {args.batch} calls per handler")
        local = in_process(args.rounds, args.batch, tree)
        if not args.in_process_only:
            print(
                f"end to end: {args.rounds} rounds x {args.seconds}s per server, "
                f"{args.clients} connections x {args.streams} streams"
            )
            e2e = end_to_end(args.rounds, args.seconds, args.clients, args.streams, tree)
    report(e2e, local, args.against)


if __name__ == "__main__":
    main()
