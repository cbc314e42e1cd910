"""The sync conformance suite (``asgi_micro.testing.sync``) on memory, SQLite, PostgreSQL and
Redis; etcd runs it in ``test_etcd.py``. PostgreSQL tables and Redis keys are named per test
and removed afterwards."""

from __future__ import annotations

import contextlib
import uuid
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
from asgi_micro.testing.sync import SyncConformance
from tests.helpers import require_server

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"


class TestMemory(SyncConformance):
    """The memory sync has no other process: its peer is itself."""

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[tuple[Sync, Store]]:
        self.memory = MemorySync()
        async with self.memory, MemoryStore() as store:
            yield self.memory, store

    @contextlib.asynccontextmanager
    async def peer(self) -> AsyncIterator[Sync]:
        yield self.memory

    async def expire(self, name: str) -> None:
        del self.memory._holders[name]


class SQLBackend(SyncConformance):
    """Leases in the lock table beside the store's; ``url`` and ``sql_table`` say where."""

    url: str
    sql_table: str

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[tuple[Sync, Store]]:
        store = SQLStore.from_url(self.url, sql_table=self.sql_table)
        self.locks = StoreSync(store)
        try:
            async with store, self.locks:
                yield self.locks, store
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
        table = self.locks.statements.table
        await self.locks._fetch(f"UPDATE {table} SET expires_at = 0 WHERE name = '{name}'")


class TestSQLite(SQLBackend):
    @pytest.fixture(autouse=True)
    def _database(self, tmp_path: Path) -> None:
        self.url, self.sql_table = f"sqlite:///{tmp_path / 'sync.db'}", "micro_store"


class TestPostgreSQL(SQLBackend):
    @pytest.fixture(autouse=True)
    def _database(self) -> None:
        require_server("PostgreSQL", "127.0.0.1", 5432)
        self.url, self.sql_table = POSTGRES_URL, f"test_sync_{uuid.uuid4().hex[:12]}"


class TestRedis(SyncConformance):
    """Leases on Redis, fenced writes to a SQLite store."""

    @pytest.fixture(autouse=True)
    def _server(self, tmp_path: Path) -> None:
        require_server("Redis", "127.0.0.1", 6379)
        self.prefix = f"test-{uuid.uuid4().hex[:12]}"
        self.path = tmp_path / "fenced.db"

    def _sync(self) -> RedisSync:
        return RedisSync.from_url(f"{REDIS_URL}?prefix={self.prefix}")

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[tuple[Sync, Store]]:
        self.locks = self._sync()
        try:
            async with self.locks, SQLStore.from_url(f"sqlite:///{self.path}") as store:
                yield self.locks, store
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
        await self.locks.redis.delete(self.locks.key(name))
