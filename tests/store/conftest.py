"""Store harnesses: ``tests/store/test_conformance.py`` runs the kit's suite through each, and
the ``harness`` fixture gives other tests (auth, config, compare-and-set) one per backend.

A ``Harness``: ``open(**options)`` yields a fresh, started store
built with those constructor options, and ``held_keys(store)`` tells which keys the backend
still holds in the store's namespace, expired or not, so tests can see the sweeper work.
PostgreSQL runs on 127.0.0.1:5432 (database ``test``); each store gets a table of its own that
is dropped afterwards, so parallel runs do not collide.
"""

from __future__ import annotations

import contextlib
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
import pytest

from asgi_micro.store import Store
from asgi_micro.store.memory import MemoryStore
from asgi_micro.store.sql import SQLStore
from tests.helpers import require_server

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def unique_table() -> str:
    return f"test_store_{uuid.uuid4().hex[:12]}"


class Harness(ABC):
    @abstractmethod
    def open(self, **options: Any) -> contextlib.AbstractAsyncContextManager[Store]:
        """A fresh store, started, with these constructor options."""

    @abstractmethod
    async def held_keys(self, store: Store) -> list[str]:
        """Every key the backend holds in ``store``'s namespace, expired or not, sorted."""


class MemoryHarness(Harness):
    @contextlib.asynccontextmanager
    async def open(self, **options: Any) -> AsyncIterator[Store]:
        async with MemoryStore(**options) as store:
            yield store

    async def held_keys(self, store: Store) -> list[str]:
        assert isinstance(store, MemoryStore)
        table = store._state.tables.get((store.database_name, store.table_name))
        return list(table.keys) if table else []


class SQLiteHarness(Harness):
    directory: Path  # where its database files go: set before ``open``

    @contextlib.asynccontextmanager
    async def open(self, **options: Any) -> AsyncIterator[Store]:
        path = self.directory / f"{uuid.uuid4().hex}.db"
        async with SQLStore.from_url(f"sqlite:///{path}", **options) as store:
            yield store

    async def held_keys(self, store: Store) -> list[str]:
        assert isinstance(store, SQLStore)
        path = store.url.removeprefix("sqlite:///")
        async with aiosqlite.connect(path) as connection:
            rows = await connection.execute_fetchall(
                f"SELECT key FROM {store.statements.table} "
                "WHERE database_name = ? AND table_name = ? ORDER BY key",
                (store.database_name, store.table_name),
            )
        return [row[0] for row in rows]


class PostgresHarness(Harness):
    @contextlib.asynccontextmanager
    async def open(self, **options: Any) -> AsyncIterator[Store]:
        options.setdefault("sql_table", unique_table())
        try:
            async with SQLStore.from_url(POSTGRES_URL, **options) as store:
                yield store
        finally:
            await drop_table(options["sql_table"])

    async def held_keys(self, store: Store) -> list[str]:
        assert isinstance(store, SQLStore)
        connection = await asyncpg.connect(POSTGRES_URL)
        try:
            rows = await connection.fetch(
                f"SELECT key FROM {store.statements.table} "
                "WHERE database_name = $1 AND table_name = $2 ORDER BY key",
                store.database_name,
                store.table_name,
            )
        finally:
            await connection.close()
        return [row[0] for row in rows]


async def drop_table(name: str) -> None:
    connection = await asyncpg.connect(POSTGRES_URL)
    try:
        await connection.execute(f"DROP TABLE IF EXISTS {name}")
    finally:
        await connection.close()


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    if request.param == "memory":
        return MemoryHarness()
    if request.param == "sqlite":
        sqlite = SQLiteHarness()
        sqlite.directory = tmp_path
        return sqlite
    require_server("PostgreSQL", "127.0.0.1", 5432)
    return PostgresHarness()


@pytest.fixture
async def store(harness: Harness) -> AsyncIterator[Store]:
    async with harness.open() as opened:
        yield opened
