"""The example services end to end: separate processes started as the README starts them,
finding each other over mDNS on loopback, and the ``asgi-micro`` commands run from another shell.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import orjson
import pytest

from asgi_micro.registry import Service
from asgi_micro.registry.mdns import MDNSRegistry
from tests.helpers import eventually, mdns
from tests.processes import (
    FRONTEND,
    GREETER,
    CommandResult,
    Server,
    asgi_micro,
    listing,
    patient,
    serving,
)

pytestmark = pytest.mark.slow

ERROR_KEYS = {"id", "code", "detail", "status"}


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=5.0) as client:
        yield client


@pytest.fixture
async def observer() -> AsyncIterator[MDNSRegistry]:
    """A registry in the test process, on loopback like the services."""
    async with mdns() as registry:
        yield registry


def addresses(services: list[Service] | list[dict[str, object]]) -> set[str]:
    found = set()
    for service in services:
        record = Service.from_dict(service) if isinstance(service, dict) else service
        found |= {node.address for node in record.nodes}
    return found


def one_version(result: CommandResult) -> dict[str, object]:
    assert result.returncode == 0, result
    [service] = result.json()
    assert isinstance(service, dict)
    return service


async def test_greeter_quick_start(http: httpx.AsyncClient) -> None:
    async with serving(GREETER, args=("--log-level", "info")) as [greeter]:
        # The curl request, byte for byte.
        hello = await http.post(
            f"{greeter.url}/greeter/hello",
            headers={"content-type": "application/json"},
            content=b'{"name":"Ada"}',
        )
        assert (hello.status_code, hello.json()) == (200, {"message": "Hello Ada"})
        malformed = await http.post(
            f"{greeter.url}/greeter/hello",
            headers={"content-type": "application/json"},
            content=b'{"name":',
        )
        assert malformed.status_code == 400
        error = malformed.json()
        assert set(error) == ERROR_KEYS
        assert (error["id"], error["code"], error["status"]) == ("greeter", 400, "Bad Request")
        assert "Invalid JSON" in error["detail"]
        node_id = (await http.get(f"{greeter.url}/")).json()["node"]
        # What it registered, and where, is the first thing it says.
        [announced] = [line for line in greeter.output().splitlines() if "registered" in line]
        grpc_port = announced.rpartition(", grpc 127.0.0.1:")[2].partition(" ")[0]
        assert announced.endswith(
            f"greeter 1.0.0 registered node {node_id} at {greeter.address}, "
            f"grpc 127.0.0.1:{grpc_port} in {os.environ['MICRO_REGISTRY']}"
        )
        assert grpc_port.isdigit()

        direct = ("--address", greeter.address)
        (
            services,
            services_json,
            describe,
            call,
            call_direct,
            call_error,
            call_grpc,
            call_grpc_error,
            health,
        ) = await asyncio.gather(
            asgi_micro("services", env=listing()),
            asgi_micro("services", "--json", env=listing()),
            asgi_micro("describe", "greeter", env=patient()),  # whole, though a pipe is 80 columns
            asgi_micro("call", "greeter", "Greeter.Hello", '{"name":"Ada"}', env=patient()),
            asgi_micro(
                "call", "greeter", "Greeter.Hello", '{"name":"Ada"}', "-m", "greeting=Hi", *direct
            ),
            asgi_micro("call", "greeter", "Greeter.Hello", '{"name":""}', *direct),
            asgi_micro(
                "call",
                "greeter",
                "Greeter.Hello",
                '{"name":"Ada"}',
                "-m",
                "greeting=Hi",
                "--transport",
                "grpc",
                env=patient(),
            ),
            asgi_micro(
                "call",
                "greeter",
                "Greeter.Hello",
                '{"name":""}',
                "--transport",
                "grpc",
                env=patient(),
            ),
            asgi_micro("health", "greeter", env=patient()),
        )
        call_stream, call_bidi, call_unknown = await asyncio.gather(
            asgi_micro(
                "call", "greeter", "Greeter.Greetings", '{"name":"Ada","count":2}', env=patient()
            ),
            asgi_micro(
                "call", "greeter", "Greeter.Chat", '[{"name":"Ada"},{"name":"Bob"}]', env=patient()
            ),
            asgi_micro("call", "greeter", "Greeter.Nope", "{}", env=patient()),
        )

    assert services.returncode == 0, services
    [row] = [line for line in services.stdout.splitlines() if " greeter " in line]
    assert "1.0.0" in row
    assert greeter.address in row
    listed = {service["name"]: service for service in services_json.json()}
    assert greeter.address in addresses([listed["greeter"]])

    assert describe.returncode == 0, describe
    assert "greeter 1.0.0" in describe.stdout
    assert greeter.address in describe.stdout
    assert node_id in describe.stdout
    endpoints = {row[0]: row[1:] for row in _table_rows(describe.stdout)}
    # Route, request fields, response fields.
    assert endpoints["Greeter.Hello"] == ["POST /greeter/hello", "name: string", "message: string"]
    assert endpoints["GET /"] == ["GET /", "", "map[string]string"]

    assert call.returncode == 0, call
    assert call.json() == {"message": "Hello Ada"}
    # Straight to the node, with metadata that the greeter reads from its context.
    assert call_direct.returncode == 0, call_direct
    assert call_direct.json() == {"message": "Hi Ada"}

    assert call_error.returncode == 1, call_error
    assert call_error.stdout == ""
    error = orjson.loads(call_error.stderr)
    assert set(error) == ERROR_KEYS
    assert (error["id"], error["code"], error["status"]) == ("greeter", 400, "Bad Request")
    assert error["detail"].startswith("name:")

    # The same endpoint over gRPC, found by name, metadata and errors included.
    assert call_grpc.returncode == 0, call_grpc
    assert call_grpc.json() == {"message": "Hi Ada"}
    assert call_grpc_error.returncode == 1, call_grpc_error
    assert orjson.loads(call_grpc_error.stderr) == error

    # A stream prints one reply per line, as it comes; a bidirectional one goes over gRPC.
    assert call_stream.returncode == 0, call_stream
    assert [orjson.loads(line) for line in call_stream.stdout.splitlines()] == [
        {"message": "Hello Ada (1)"},
        {"message": "Hello Ada (2)"},
    ]
    assert call_bidi.returncode == 0, call_bidi
    assert [orjson.loads(line) for line in call_bidi.stdout.splitlines()] == [
        {"message": "Hello Ada"},
        {"message": "Hello Bob"},
    ]
    assert call_unknown.returncode == 2, call_unknown
    assert call_unknown.stderr.strip() == (
        "greeter has no endpoint 'Greeter.Nope'; it has: GET /, Greeter.Chat, "
        "Greeter.Greetings, Greeter.Hello"
    )

    assert health.returncode == 0, health
    [health_row] = [row for row in _table_rows(health.stdout) if greeter.address in row]
    assert health_row[-1] == "serving"


def _table_rows(output: str) -> list[list[str]]:
    """The cells of each table row in ``output``, on a terminal wide enough not to wrap them."""
    return [
        [cell.strip() for cell in line.strip("│").split("│")]
        for line in output.splitlines()
        if line.startswith("│")
    ]


@dataclass
class Stop:
    """What a test saw while a node stopped, in seconds from the signal."""

    signal_at: float
    deregistered: float | None = None  # when the observer stopped listing the node
    draining: list[float] = field(default_factory=list)  # 503 "draining" answers
    serving: list[float] = field(default_factory=list)  # 200 "serving" answers
    exited: float | None = None
    exit_code: int | None = None


async def stop_and_watch(
    server: Server, signum: signal.Signals, observer: MDNSRegistry, http: httpx.AsyncClient
) -> Stop:
    """Signal ``server`` and follow it until it exits: the observer's view of it, and what its
    ``/_micro/health`` answers for as long as it listens."""
    stop = Stop(signal_at=time.monotonic())
    server.signal(signum)
    deadline = stop.signal_at + 15.0
    while time.monotonic() < deadline:
        elapsed = time.monotonic() - stop.signal_at
        if stop.deregistered is None:
            listed = addresses(await observer.get_service("greeter"))
            if server.address not in listed:
                stop.deregistered = elapsed
        try:
            health = await http.get(f"{server.url}/_micro/health", timeout=1.0)
        except httpx.TransportError:
            pass  # closed
        else:
            if health.status_code == 200:
                assert health.json()["status"] == "serving"
                stop.serving.append(elapsed)
            else:
                assert (health.status_code, health.json()["status"]) == (503, "draining")
                stop.draining.append(elapsed)
        assert server.process is not None
        if server.process.returncode is not None:
            stop.exited = time.monotonic() - stop.signal_at
            stop.exit_code = server.process.returncode
            return stop
        await asyncio.sleep(0.02)
    raise AssertionError(f"{server} did not exit within 15 s of {signum.name}: {stop}")


async def test_two_greeters_and_the_frontend(
    http: httpx.AsyncClient, observer: MDNSRegistry
) -> None:
    async with serving(GREETER, GREETER, FRONTEND) as [first, second, frontend]:
        ids = {
            server.address: (await http.get(f"{server.url}/")).json()["node"]
            for server in (first, second)
        }
        welcome = await http.get(f"{frontend.url}/welcome/Ada")
        assert (welcome.status_code, welcome.json()) == (200, {"message": "Hello Ada"})
        # The greeter judges the name; its error reaches the frontend's caller as it was.
        refused = await http.get(f"{frontend.url}/welcome/{'x' * 101}")
        assert refused.status_code == 400
        assert refused.json()["id"] == "greeter"
        assert "at most 100 characters" in refused.json()["detail"]

        services, described = await asyncio.gather(
            asgi_micro("services", "--json", env=listing()),
            asgi_micro("describe", "greeter", "--json"),
        )
        assert services.returncode == 0, services
        listed = {service["name"]: service for service in services.json()}
        assert {first.address, second.address} <= addresses([listed["greeter"]])
        assert frontend.address in addresses([listed["frontend"]])
        record = Service.from_dict(one_version(described))
        assert {(n.address, n.id) for n in record.nodes} >= set(ids.items())

        # The frontend's calls spread over both greeters.
        async def served() -> dict[str, int]:
            stats = [(await http.get(f"{s.url}/_micro/stats")).json() for s in (first, second)]
            return {s.address: st["requests"] for s, st in zip((first, second), stats, strict=True)}

        before = await served()
        calls = 40
        for _ in range(calls):
            assert (await http.get(f"{frontend.url}/welcome/Ada")).status_code == 200
        after = await served()
        shares = {address: after[address] - before[address] for address in after}
        assert sum(shares.values()) <= calls
        assert min(shares.values()) >= 5, shares

        # SIGINT, Ctrl-C: the node deregisters, then drains while it still listens; the frontend
        # keeps calling all along and never meets the closing node.
        await eventually(
            lambda: _lists(observer, {first.address, second.address}),
            message="the observer sees both greeters",
        )
        frontend_statuses: list[int] = []

        async def keep_calling() -> None:
            while True:
                response = await http.get(f"{frontend.url}/welcome/Ada")
                frontend_statuses.append(response.status_code)
                await asyncio.sleep(0.01)

        caller = asyncio.create_task(keep_calling())
        try:
            fresh_describe = asyncio.create_task(asgi_micro("describe", "greeter", "--json"))
            stop = await stop_and_watch(first, signal.SIGINT, observer, http)
            described_after = await fresh_describe
        finally:
            caller.cancel()
            [calling] = await asyncio.gather(caller, return_exceptions=True)
        assert isinstance(calling, asyncio.CancelledError), calling  # no call raised
        _check_graceful(stop, expected_exit=0)
        assert frontend_statuses, "the frontend was not called during the stop"
        assert set(frontend_statuses) == {200}, frontend_statuses
        # A fresh `describe`, started after the signal, lists the other greeter alone.
        assert described_after.started >= stop.signal_at
        assert addresses([one_version(described_after)]) == {second.address}
        print(
            f"SIGINT: gone from the observer after {stop.deregistered:.3f}s; draining answers "
            f"{stop.draining[0]:.3f}-{stop.draining[-1]:.3f}s; exited at {stop.exited:.3f}s; "
            "a fresh describe started "
            f"{described_after.started - stop.signal_at:.3f}s after the signal took "
            f"{described_after.finished - described_after.started:.3f}s"
        )

        # SIGTERM, as from a process manager: the same graceful path.
        stop = await stop_and_watch(second, signal.SIGTERM, observer, http)
        _check_graceful(stop, expected_exit=-signal.SIGTERM)
        gone, unavailable = await asyncio.gather(
            asgi_micro("describe", "greeter"), http.get(f"{frontend.url}/welcome/Ada")
        )
        assert gone.returncode == 1, gone
        assert "service 'greeter' not found" in gone.stderr
        assert unavailable.status_code == 503
        assert set(unavailable.json()) == ERROR_KEYS
        print(
            f"SIGTERM: gone from the observer after {stop.deregistered:.3f}s; a fresh describe "
            f"took {gone.finished - gone.started:.3f}s"
        )


async def _lists(registry: MDNSRegistry, wanted: set[str]) -> bool:
    return wanted <= addresses(await registry.get_service("greeter"))


def _check_graceful(stop: Stop, *, expected_exit: int) -> None:
    assert stop.exit_code == expected_exit, stop
    assert stop.deregistered is not None
    assert stop.deregistered < 2.0, stop
    # It deregistered before it closed its socket: it still answered, draining, after the
    # observer had stopped listing it.
    assert stop.draining, stop
    assert stop.draining[-1] > stop.deregistered, stop
    assert not [t for t in stop.serving if t > stop.draining[0]], stop


async def test_frontend_adopted_with_one_line_is_registered_with_its_routes(
    http: httpx.AsyncClient, observer: MDNSRegistry
) -> None:
    async with serving(FRONTEND) as [frontend]:
        described, health = await asyncio.gather(
            asgi_micro("describe", "frontend", "--json"),
            http.get(f"{frontend.url}/_micro/health"),
        )
        found = await observer.get_service("frontend")
        without_greeter = await http.get(f"{frontend.url}/welcome/Ada")

    assert health.status_code == 200
    assert health.json()["status"] == "serving"
    assert health.json()["service"] == "frontend"
    for record in (Service.from_dict(one_version(described)), *found):
        assert record.version == "1.0.0"
        assert frontend.address in {node.address for node in record.nodes}
        [welcome] = record.endpoints
        assert welcome.name == "GET /welcome/{name}"
        assert welcome.metadata["method"] == "GET"
        assert welcome.metadata["path"] == "/welcome/{name}"
        assert welcome.metadata["parameters"] == "path:name"
    # No greeter is running: the client's error, in the one shape.
    assert without_greeter.status_code == 503
    assert without_greeter.json()["code"] == 503
    assert set(without_greeter.json()) == ERROR_KEYS
