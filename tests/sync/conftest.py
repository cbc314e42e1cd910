"""The ``harness`` fixture runs each sync conformance test once per backend.

A ``Harness`` opens a started sync and the store its fenced writes go to; ``peer()`` is another
sync on the same backend, as another process would have (the memory sync has no other process:
its peer is itself); ``expire(name)`` makes the backend forget a lease, as a TTL that ran out
while its holder was paused would. PostgreSQL tables and Redis keys are named per test and
removed afterwards.
"""

from __future__ import annotations

import contextlib
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio
from asgi_micro_redis.sync import RedisSync

from asgi_micro.store import Store
from asgi_micro.store.memory import MemoryStore
from asgi_micro.store.sql import SQLStore
from asgi_micro.sync import Sync
from asgi_micro.sync.memory import MemorySync
from asgi_micro.sync.store import StoreSync
from tests.helpers import require_server

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"


class Harness(ABC):
    sync: Sync
    store: Store

    @abstractmethod
    def open(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Start ``sync`` and ``store``; stop them and remove what they made afterwards."""

    @abstractmethod
    def peer(self) -> contextlib.AbstractAsyncContextManager[Sync]:
        """Another started sync on the same backend."""

    @abstractmethod
    async def expire(self, name: str) -> None:
        """Make the backend drop the lease on ``name`` now."""


class MemoryHarness(Harness):
    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[None]:
        self.sync, self.store = MemorySync(), MemoryStore()
        async with self.sync, self.store:
            yield

    @contextlib.asynccontextmanager
    async def peer(self) -> AsyncIterator[Sync]:
        yield self.sync

    async def expire(self, name: str) -> None:
        assert isinstance(self.sync, MemorySync)
        del self.sync._holders[name]


class SQLHarness(Harness):
    def __init__(self, url: str, sql_table: str) -> None:
        self.url, self.sql_table = url, sql_table

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[None]:
        store = SQLStore.from_url(self.url, sql_table=self.sql_table)
        self.store, self.sync = store, StoreSync(store)
        try:
            async with store, self.sync:
                yield
        finally:
            if self.url.startswith("postgresql"):
                connection = await asyncpg.connect(POSTGRES_URL)
                try:
                    for suffix in ("", "_lock", "_fence"):
                        await connection.execute(f"DROP TABLE IF EXISTS {self.sql_table}{suffix}")
                finally:
                    await connection.close()

    @contextlib.asynccontextmanager
    async def peer(self) -> AsyncIterator[Sync]:
        store = SQLStore.from_url(self.url, sql_table=self.sql_table, pool_size=2)
        async with StoreSync(store, owns_store=True) as sync:
            yield sync

    async def expire(self, name: str) -> None:
        assert isinstance(self.sync, StoreSync)
        table = self.sync.statements.table
        await self.sync._fetch(f"UPDATE {table} SET expires_at = 0 WHERE name = '{name}'")


class RedisHarness(Harness):
    """Leases on Redis, fenced writes to a SQLite store."""

    def __init__(self, directory: Path) -> None:
        self.prefix = f"test-{uuid.uuid4().hex[:12]}"
        self.path = directory / "fenced.db"

    def _sync(self) -> RedisSync:
        return RedisSync.from_url(f"{REDIS_URL}?prefix={self.prefix}")

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[None]:
        self.sync, self.store = self._sync(), SQLStore.from_url(f"sqlite:///{self.path}")
        try:
            async with self.sync, self.store:
                yield
        finally:
            client = redis.asyncio.Redis.from_url(REDIS_URL)
            try:
                keys = [key async for key in client.scan_iter(match=f"{self.prefix}:*")]
                if keys:
                    await client.delete(*keys)
            finally:
                await client.aclose()

    @contextlib.asynccontextmanager
    async def peer(self) -> AsyncIterator[Sync]:
        async with self._sync() as sync:
            yield sync

    async def expire(self, name: str) -> None:
        assert isinstance(self.sync, RedisSync)
        await self.sync.redis.delete(self.sync.key(name))


@pytest.fixture(params=["memory", "sqlite", "postgresql", "redis"])
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    opened: Harness
    if request.param == "memory":
        opened = MemoryHarness()
    elif request.param == "sqlite":
        opened = SQLHarness(f"sqlite:///{tmp_path / 'sync.db'}", "micro_store")
    elif request.param == "postgresql":
        require_server("PostgreSQL", "127.0.0.1", 5432)
        opened = SQLHarness(POSTGRES_URL, f"test_sync_{uuid.uuid4().hex[:12]}")
    else:
        require_server("Redis", "127.0.0.1", 6379)
        opened = RedisHarness(tmp_path)
    async with opened.open():
        yield opened
