"""Locks and leadership across real processes that are killed and paused mid-hold.

Five counter processes share a SQLite file store and take turns under one lock; one is
SIGKILLed while it holds the lock and another SIGSTOPped past its TTL, then resumed, when its
write must be refused by its stale fencing token. Then three processes elect a leader; the
leader is killed and another must take over within TTL + 1 s (and the backend's
``EXPIRY_SLACK``); the next leader is paused and must learn it lost before it acts again. Each
runs on SQLite, Redis and etcd.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio
from asgi_micro_etcd._client import connect

from asgi_micro.store.sql import SQLStore
from tests.helpers import require_server, until
from tests.sync.worker import TTL

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 5
INCREMENTS = 200
REDIS_URL = "redis://127.0.0.1:6379/0"
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
EXPIRY_SLACK = {"etcd": 2.0}
"""Seconds past its TTL that a backend may keep a dead holder's lease, by URL scheme: etcd
grants leases of 2 s at the least and looks for expired ones every 0.5 s."""


class Child:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.events.append(orjson.loads(line))

    def signal(self, number: signal.Signals) -> float:
        sent = time.time()
        os.kill(self.process.pid, number)
        return sent

    def first(self, kind: str) -> dict[str, Any] | None:
        return next((event for event in self.events if kind in event), None)


@contextlib.asynccontextmanager
async def children(*commands: list[str]) -> AsyncIterator[list[Child]]:
    started = []
    try:
        for args in commands:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.sync.worker", *args,
                cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            started.append(Child(process))
        yield started
    finally:
        for child in started:
            if child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.process.pid, signal.SIGCONT)
                    child.process.kill()
            await child.process.wait()
            await asyncio.wait_for(child.reader, timeout=10)


@pytest.fixture(params=["store", "postgresql", "redis", "etcd"])
async def sync_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "store":
        yield f"sqlite:///{tmp_path / 'locks.db'}"
        return
    if request.param == "postgresql":
        # The lock table of the default store table, shared with other runs: the lock names
        # are this test's own, and their rows (one per name) stay, as their tokens must.
        require_server("PostgreSQL", "127.0.0.1", 5432)
        yield POSTGRES_URL
        return
    if request.param == "etcd":
        etcd = "etcd://" + request.getfixturevalue("etcd_url").removeprefix("http://")
        prefix = f"/test-{uuid.uuid4().hex[:12]}/sync/"
        try:
            yield f"{etcd}?prefix={prefix}"
        finally:
            client = await connect(etcd)
            try:
                await client.delete_prefix(prefix.encode())
            finally:
                await client.close()
        return
    require_server("Redis", "127.0.0.1", 6379)
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    try:
        yield f"{REDIS_URL}?prefix={prefix}"
    finally:
        client = redis.asyncio.Redis.from_url(REDIS_URL)
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def acks(child: Child) -> list[dict[str, Any]]:
    return [event for event in child.events if "ack" in event]


async def test_killed_and_paused_holders_lose_no_increment(sync_url: str, tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path / 'counter.db'}"
    name = f"counter/{uuid.uuid4().hex[:8]}"
    commands = [["counter", sync_url, store_url, name, str(INCREMENTS)] for _ in range(PROCESSES)]
    commands[0].append("5")  # killed while it holds the lock
    commands[1].append("+15")  # paused past its TTL while it holds the lock
    # The second victim starts counting once the first is killed: one that reached its hold
    # first would hold the lock (waiting for the test) while the test waits for the first.
    async with children(*commands) as running:
        killed, paused, others = running[0], running[1], running[2:]
        try:
            await until(lambda: killed.first("holding"), "the first victim to hold the lock", 60)
        except AssertionError as exc:  # say how far each got
            progress = [(len(acks(c)), c.process.returncode) for c in running]
            raise AssertionError(f"{exc}; (acks, exit code) of each: {progress}") from None
        killed.signal(signal.SIGKILL)
        assert paused.process.stdin is not None
        paused.process.stdin.write(b"start\n")
        await paused.process.stdin.drain()
        await until(lambda: paused.first("holding"), "the second victim to hold the lock", 60)
        paused.signal(signal.SIGSTOP)
        stale = paused.first("holding")["holding"]  # type: ignore[index]

        def successor_wrote() -> bool:
            return any(e["token"] > stale for child in others for e in acks(child))

        await until(successor_wrote, "a successor to write", 30)
        await asyncio.sleep(TTL)
        paused.signal(signal.SIGCONT)
        assert paused.process.stdin is not None
        paused.process.stdin.write(b"go on\n")  # write now, with the stale token
        await paused.process.stdin.drain()
        for child in running[1:]:
            assert await asyncio.wait_for(child.process.wait(), timeout=240) == 0

    assert killed.process.returncode == -signal.SIGKILL
    refused = paused.first("refused")
    assert refused is not None, f"the stale write got through: {paused.events[10:25]}"
    assert refused["refused"] == stale
    assert refused["lost"], "the resumed holder did not know it had lost the lease"

    acknowledged = sorted((e for child in running for e in acks(child)), key=lambda e: e["start"])
    expected = 5 + (PROCESSES - 1) * INCREMENTS - 1  # the killed one's 6th and the refused one
    assert len(acknowledged) == expected
    assert [e["ack"] for e in sorted(acknowledged, key=lambda e: e["ack"])] == list(
        range(1, expected + 1)
    )
    for before, after in itertools.pairwise(acknowledged):
        assert before["end"] <= after["start"], f"overlapping holders: {before} {after}"
        assert before["token"] < after["token"]
    async with SQLStore.from_url(store_url) as store:
        [record] = await store.read("counter")
    assert int(record.value) == expected


async def test_leadership_moves_on_when_the_leader_is_killed_or_paused(sync_url: str) -> None:
    name = f"election-{uuid.uuid4().hex[:8]}"
    async with children(*(["leader", sync_url, name] for _ in range(3))) as running:

        def leader_since(moment: float, among: list[Child]) -> Callable[[], Child | None]:
            def find() -> Child | None:
                for child in among:
                    if any("leader" in e and e["t"] >= moment for e in child.events):
                        return child
                return None

            return find

        await until(leader_since(0, running), "a first leader", 30)
        first = leader_since(0, running)()
        assert first is not None
        await asyncio.sleep(0.3)
        killed_at = first.signal(signal.SIGKILL)
        rest = [child for child in running if child is not first]
        await until(leader_since(killed_at, rest), "a leader after the kill", 10)
        second = leader_since(killed_at, rest)()
        assert second is not None
        took_over = next(e["t"] for e in second.events if "leader" in e and e["t"] >= killed_at)
        slack = EXPIRY_SLACK.get(sync_url.partition(":")[0], 0.0)
        assert took_over - killed_at <= TTL + 1.0 + slack

        await asyncio.sleep(0.3)
        stopped_at = second.signal(signal.SIGSTOP)
        [third] = [child for child in rest if child is not second]
        await until(leader_since(stopped_at, [third]), "a leader after the pause", 10)
        await asyncio.sleep(0.2)
        resumed_at = second.signal(signal.SIGCONT)
        await until(
            lambda: any(e["t"] >= resumed_at for e in second.events), "the resumed leader", 10
        )
        await asyncio.sleep(0.3)

    after = [e for e in second.events if e["t"] >= resumed_at]
    assert "lost" in after[0], f"the paused leader acted before it learned it lost: {after[:3]}"
    acting = sorted(
        (e for child in running for e in child.events if "acting" in e), key=lambda e: e["t"]
    )
    tokens = [e["acting"] for e in acting]
    assert tokens == sorted(tokens), "an old leader acted after a newer one had started"
    assert len(set(tokens)) >= 3
