"""Compare-and-set under contention: a counter that many tasks increment loses no update."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from asgi_micro.errors import Conflict
from asgi_micro.store import Store
from asgi_micro.store.sql import SQLStore
from tests.helpers import require_server
from tests.store.conftest import POSTGRES_URL, Harness, drop_table

TASKS = 20
INCREMENTS = 5


async def increment(store: Store, key: str, tally: dict[str, int], deadline: float) -> None:
    """Add one to the counter ``INCREMENTS`` times, retrying each lost compare-and-set."""
    done = 0
    while done < INCREMENTS:
        assert time.monotonic() < deadline, "the counter made no progress"
        [record] = await store.read(key)
        await asyncio.sleep(0)  # let the other tasks read the same version
        try:
            await store.write(key, b"%d" % (int(record.value) + 1), if_version=record.version)
        except Conflict:
            tally["conflicts"] += 1
            continue
        tally["successes"] += 1
        done += 1


async def test_twenty_tasks_increment_one_counter(harness: Harness) -> None:
    async with harness.open() as store:
        await store.write("counter", b"0")
        tally = {"successes": 0, "conflicts": 0}
        deadline = time.monotonic() + 30

        await asyncio.gather(*(increment(store, "counter", tally, deadline) for _ in range(TASKS)))

        [record] = await store.read("counter")
        assert int(record.value) == tally["successes"] == TASKS * INCREMENTS
        assert record.version == tally["successes"] + 1
        assert tally["conflicts"] > 0  # the tasks did contend


@pytest.fixture(params=["sqlite", "postgresql"])
async def two_stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[list[Store]]:
    """Two stores with their own connections on one database, as two processes would have."""
    if request.param == "sqlite":
        url, options = f"sqlite:///{tmp_path / 'shared.db'}", {}
    else:
        require_server("PostgreSQL", "127.0.0.1", 5432)
        url, options = POSTGRES_URL, {"sql_table": f"test_store_{uuid.uuid4().hex[:12]}"}
    stores: list[Store] = [SQLStore.from_url(url, pool_size=2, **options) for _ in range(2)]
    try:
        for store in stores:
            await store.start()
        yield stores
    finally:
        for store in stores:
            await store.stop()
        if "sql_table" in options:
            await drop_table(options["sql_table"])


async def test_counter_shared_by_two_stores(two_stores: list[Store]) -> None:
    first, second = two_stores
    await first.write("counter", b"0")
    tally = {"successes": 0, "conflicts": 0}
    deadline = time.monotonic() + 30

    await asyncio.gather(
        *(increment(two_stores[n % 2], "counter", tally, deadline) for n in range(TASKS))
    )

    [record] = await second.read("counter")
    assert int(record.value) == tally["successes"] == TASKS * INCREMENTS
    assert tally["conflicts"] > 0
