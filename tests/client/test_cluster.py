"""Three nodes in separate processes, found over mDNS on loopback: load balancing, kill -9 and
a rolling restart while calls keep flowing."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import httpx
import pytest

from asgi_micro import errors
from asgi_micro.client import Client
from asgi_micro.client.outliers import OutlierDetector
from asgi_micro.client.selector import (
    LeastOutstanding,
    PowerOfTwoChoices,
    Random,
    RoundRobin,
    Strategy,
)
from asgi_micro.registry import Node
from asgi_micro.registry.mdns import MDNSRegistry
from tests.helpers import eventually, free_port, mdns

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


class Cluster:
    def __init__(self, name: str) -> None:
        self.name = name
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    async def start_many(self, count: int) -> list[int]:
        """Start ``count`` nodes at once (each spends seconds importing), up when all are."""
        async with asyncio.TaskGroup() as group:
            starts = [group.create_task(self.start()) for _ in range(count)]
        return [start.result() for start in starts]

    async def start(self, port: int | None = None) -> int:
        port = port or free_port()
        env = {
            **os.environ,
            "CLUSTER_SERVICE": self.name,
            "MICRO_STORE": "memory://",
            "MICRO_REGISTER_TTL": "3",
            "MICRO_REGISTER_INTERVAL": "1",
        }
        env.pop("MICRO_ADDRESS", None)
        self.processes[port] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "asgi_micro",
                "run",
                "tests/client/cluster_app.py",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
        )
        async with httpx.AsyncClient() as http:

            async def healthy() -> bool:
                with contextlib.suppress(httpx.TransportError):
                    return (
                        await http.get(f"http://127.0.0.1:{port}/_micro/health")
                    ).status_code == 200
                return False

            await eventually(healthy, timeout=20, interval=0.1, message=f"node on {port} not up")
        return port

    def kill(self, port: int, signum: int) -> None:
        self.processes[port].send_signal(signum)

    async def wait_exit(self, port: int, timeout: float = 20.0) -> int:
        process = self.processes.pop(port)
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if process.poll() is None:
            process.kill()
            raise AssertionError(f"node on {port} did not exit within {timeout}s")
        return process.returncode

    def stop_all(self) -> None:
        for process in self.processes.values():
            process.kill()
        for process in self.processes.values():
            process.wait(timeout=10)
        self.processes.clear()


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    cluster = Cluster(f"cluster-{uuid.uuid4().hex[:8]}")
    try:
        await cluster.start_many(3)
        yield cluster
    finally:
        cluster.stop_all()


@pytest.fixture
async def registry() -> AsyncIterator[MDNSRegistry]:
    async with mdns() as registry:
        yield registry


async def node_ids(client: Client, name: str) -> set[str]:
    return {node.id for record in await client.cache.get(name) for node in record.nodes}


async def wait_for_nodes(client: Client, name: str, count: int) -> set[str]:
    async def seen() -> set[str] | None:
        ids = await node_ids(client, name)
        return ids if len(ids) == count else None

    found = await eventually(seen, timeout=15, interval=0.1, message=f"{count} nodes not visible")
    assert found is not None
    return found


class Recording(Strategy):
    """Wraps a strategy and writes down each pick and whether the node was ejected then."""

    def __init__(self, inner: Strategy, client: Callable[[], Client]) -> None:
        self.inner = inner
        self.client = client
        self.picks: list[tuple[float, str, bool]] = []

    def pick(self, service: str, nodes: Sequence[Node], load: Callable[[Node], int]) -> Node:
        node = self.inner.pick(service, nodes, load)
        self.picks.append((time.monotonic(), node.id, self.client().outliers.ejected(node)))
        return node


async def run_calls(
    client: Client,
    name: str,
    endpoint: str,
    total: int,
    concurrency: int,
    on_progress: Callable[[int], None] = lambda done: None,
) -> tuple[list[str], list[Exception]]:
    replies: list[str] = []
    failures: list[Exception] = []
    queue = iter(range(total))

    async def worker() -> None:
        for _ in queue:
            started = time.monotonic()
            try:
                replies.append((await client.call(name, endpoint, {}, timeout=10))["node"])
            except errors.MicroError as exc:
                exc.add_note(f"started={started}")
                failures.append(exc)
            on_progress(len(replies) + len(failures))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return replies, failures


@pytest.mark.parametrize("strategy", [Random, RoundRobin, LeastOutstanding, PowerOfTwoChoices])
async def test_calls_spread_over_all_three(
    cluster: Cluster, registry: MDNSRegistry, strategy: type[Strategy]
) -> None:
    client = Client(registry=registry, strategy=strategy())
    try:
        ids = await wait_for_nodes(client, cluster.name, 3)
        replies, failures = await run_calls(client, cluster.name, "Echo.Safe", 300, 8)
    finally:
        await client.aclose()
    assert failures == []
    counts = collections.Counter(replies)
    assert set(counts) == ids
    assert min(counts.values()) >= 30, counts


async def kill_mid_stream(
    cluster: Cluster, registry: MDNSRegistry, endpoint: str
) -> tuple[list[str], list[Exception], Recording, str, float]:
    recording = Recording(RoundRobin(), lambda: client)
    client = Client(
        registry=registry,
        strategy=recording,
        outliers=OutlierDetector(consecutive_failures=3, base_ejection=1.0),
    )
    victim_port = next(iter(cluster.processes))
    killed_at = 0.0
    try:
        await wait_for_nodes(client, cluster.name, 3)
        victim = (
            await client.call(cluster.name, "Echo.Safe", {}, address=f"127.0.0.1:{victim_port}")
        )["node"]

        def maybe_kill(done: int) -> None:
            nonlocal killed_at
            if done >= 500 and not killed_at:
                killed_at = time.monotonic()
                cluster.kill(victim_port, signal.SIGKILL)

        replies, failures = await run_calls(client, cluster.name, endpoint, 2000, 16, maybe_kill)
    finally:
        await client.aclose()
    await cluster.wait_exit(victim_port)
    return replies, failures, recording, victim, killed_at


async def test_kill_9_loses_no_idempotent_call(cluster: Cluster, registry: MDNSRegistry) -> None:
    replies, failures, recording, victim, killed_at = await kill_mid_stream(
        cluster, registry, "Echo.Safe"
    )
    assert failures == []
    assert len(replies) == 2000
    late = [
        (at, ejected) for at, node, ejected in recording.picks if node == victim and at > killed_at
    ]
    # Picked only until three failures ejected it (plus the probes after each ejection)...
    assert len(late) <= 3 + 16 + 6, late
    # ...and never while it was ejected.
    assert not any(ejected for _, ejected in late)


async def test_kill_9_fails_only_calls_already_sent(
    cluster: Cluster, registry: MDNSRegistry
) -> None:
    replies, failures, _, _, killed_at = await kill_mid_stream(cluster, registry, "Echo.Unsafe")
    assert len(replies) + len(failures) == 2000
    # The calls in flight on the node when it died, and those sent in the moment between
    # SIGKILL and the kernel closing its sockets: a few, all started around the kill.
    assert len(failures) <= 2 * 16
    for failure in failures:
        assert isinstance(failure, errors.ConnectionLost), repr(failure)
        assert "the request was sent and may have been processed" in failure.detail
        started = float(failure.__notes__[0].removeprefix("started="))
        assert started < killed_at + 0.5, "a call was lost long after the node died"


async def test_rolling_restart_loses_nothing(cluster: Cluster, registry: MDNSRegistry) -> None:
    client = Client(registry=registry, strategy=RoundRobin())
    stop = asyncio.Event()
    replies: list[str] = []
    failures: list[Exception] = []

    async def caller() -> None:
        while not stop.is_set():
            try:
                replies.append(
                    (await client.call(cluster.name, "Echo.Unsafe", {}, timeout=10))["node"]
                )
            except errors.MicroError as exc:
                failures.append(exc)

    try:
        original = await wait_for_nodes(client, cluster.name, 3)
        workers = [asyncio.create_task(caller()) for _ in range(8)]
        for port in list(cluster.processes):
            cluster.kill(port, signal.SIGTERM)  # graceful: deregister, drain, exit
            # uvicorn re-raises the signal once it has shut down gracefully
            assert await cluster.wait_exit(port) in (0, -signal.SIGTERM)
            await cluster.start(port)
            await wait_for_nodes(client, cluster.name, 3)
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*workers)
        final = await node_ids(client, cluster.name)
    finally:
        stop.set()
        await client.aclose()
    assert failures == [], failures[:3]
    assert len(replies) > 200
    assert final.isdisjoint(original)  # every node was replaced
    assert set(replies[-100:]) <= final
