"""What only the SQL store has: index use, URLs, the embedded default, injected engines, healing."""

from __future__ import annotations

import sqlite3
import sys
import time
import uuid
from pathlib import Path

import aiosqlite
import asyncpg
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from asgi_micro.errors import ServiceUnavailable
from asgi_micro.plugins import MissingDependency
from asgi_micro.store import DEFAULT_URL, from_url
from asgi_micro.store.memory import MemoryStore
from asgi_micro.store.sql import SQLStore
from tests.helpers import require_server
from tests.store.conftest import POSTGRES_URL, drop_table

PREFIXES = ["user/", "a%b_", "user/\U0010ffff"]


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_sqlite_prefix_reads_search_the_primary_key(tmp_path: Path, prefix: str) -> None:
    path = tmp_path / "explain.db"
    async with SQLStore.from_url(f"sqlite:///{path}") as store:
        for i in range(200):
            await store.write(f"{prefix}{i:03d}", b"v")
        statements = store.statements
        async with aiosqlite.connect(path) as connection:
            for keys_only in (False, True):
                sql, args = statements.range(
                    keys_only=keys_only,
                    database="micro",
                    table="micro",
                    prefix=prefix,
                    suffix="",
                    limit=10,
                    offset=5,
                    now=time.time(),
                )
                plan = " ".join(
                    row[3]
                    for row in await connection.execute_fetchall(f"EXPLAIN QUERY PLAN {sql}", args)
                )
                assert "SEARCH micro_store USING INDEX sqlite_autoindex_micro_store_1" in plan
                assert "key>? AND key<?" in plan, plan
                assert "SCAN" not in plan, plan
                assert "TEMP B-TREE" not in plan, plan
            plan = " ".join(
                row[3]
                for row in await connection.execute_fetchall(
                    f"EXPLAIN QUERY PLAN {statements.read_key}", ("micro", "micro", "k", 0.0)
                )
            )
            assert "key=?" in plan, plan
            assert "SCAN" not in plan, plan


async def test_postgres_prefix_reads_use_the_primary_key_index() -> None:
    require_server("PostgreSQL", "127.0.0.1", 5432)
    table = f"test_store_{uuid.uuid4().hex[:12]}"
    try:
        async with SQLStore.from_url(POSTGRES_URL, sql_table=table) as store:
            connection = await asyncpg.connect(POSTGRES_URL)
            try:
                rows = [
                    ("micro", "micro", f"{prefix}{i:04d}", b"v", None, None, 1)
                    for prefix, count in (("user/", 100), ("a%b_", 100), ("other/", 5000))
                    for i in range(count)
                ]
                await connection.copy_records_to_table(table, records=rows)
                await connection.execute(f"ANALYZE {table}")
                for prefix in ("user/", "a%b_"):
                    sql, args = store.statements.range(
                        keys_only=False,
                        database="micro",
                        table="micro",
                        prefix=prefix,
                        suffix="",
                        limit=None,
                        offset=0,
                        now=time.time(),
                    )
                    plan = "\n".join(
                        row[0] for row in await connection.fetch(f"EXPLAIN {sql}", *args)
                    )
                    # an index scan, or a bitmap scan of the index: either way a range on it
                    assert f"Index Scan using {table}_pkey" in plan or (
                        f"Bitmap Index Scan on {table}_pkey" in plan
                    ), plan
                    assert "key >=" in plan, plan
                    assert "key <" in plan, plan
                    assert "Seq Scan" not in plan, plan
                collation = await connection.fetchval(
                    "SELECT collation_name FROM information_schema.columns "
                    "WHERE table_name = $1 AND column_name = 'key'",
                    table,
                )
                assert collation == "C"
                assert len(await store.read("a%b_", prefix=True)) == 100
            finally:
                await connection.close()
    finally:
        await drop_table(table)


def test_from_url_picks_the_backend(tmp_path: Path) -> None:
    assert isinstance(from_url("memory://"), MemoryStore)
    sqlite = from_url(f"sqlite:///{tmp_path / 's.db'}")
    assert isinstance(sqlite, SQLStore)
    assert sqlite.statements.dialect == "sqlite"
    for url in (
        "postgresql://postgres:secret@127.0.0.1:5432/test",
        "postgres://postgres:secret@127.0.0.1:5432/test",
        "cockroachdb://root:secret@127.0.0.1:26257/defaultdb",
    ):
        store = from_url(url)
        assert isinstance(store, SQLStore)
        assert store.statements.dialect == "postgresql"
        assert "secret" not in store.url
        assert "secret" not in repr(store)
        assert store.url.split("://")[0] == url.split("://")[0]
    with pytest.raises(ValueError, match="unknown store scheme 'redis'"):
        from_url("redis://127.0.0.1")
    with pytest.raises(ValueError, match="sql_table"):
        SQLStore.from_url("sqlite:///x.db", sql_table="Robert'); DROP TABLE students;--")


def test_a_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # what an install without the extra has
    monkeypatch.delitem(sys.modules, "asgi_micro.store.postgres", raising=False)
    with pytest.raises(MissingDependency, match=r"pip install 'asgi-micro\[postgres\]'"):
        from_url("postgresql://127.0.0.1/test")


async def test_embedded_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = from_url(DEFAULT_URL)
    assert not (tmp_path / ".micro").exists()  # nothing happens before start()
    async with store:
        await store.write("k", b"v")
    path = tmp_path / ".micro" / "store.db"
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert connection.execute("SELECT key, value, version FROM micro_store").fetchall() == [
            ("k", b"v", 1)
        ]
    connection.close()


async def test_in_memory_sqlite() -> None:
    async with SQLStore.from_url("sqlite://") as store:
        await store.write("k", b"v")
        assert (await store.read("k"))[0].value == b"v"
        assert await store.table("other").list() == []


async def test_an_injected_engine_stays_open(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'injected.db'}")
    try:
        store = SQLStore(engine, sql_table="records", pool_size=2)
        async with store:
            await store.write("k", b"v")
        async with engine.connect() as connection:
            result = await connection.exec_driver_sql("SELECT key, value FROM records")
            assert result.all() == [("k", b"v")]
        async with store:  # and the store starts again on it
            assert (await store.read("k"))[0].value == b"v"
    finally:
        await engine.dispose()


async def test_postgres_connections_heal_after_the_server_drops_them() -> None:
    require_server("PostgreSQL", "127.0.0.1", 5432)
    table = f"test_store_{uuid.uuid4().hex[:12]}"
    application = f"heal-{uuid.uuid4().hex[:8]}"
    refuse = False

    async def connect() -> asyncpg.Connection:
        if refuse:  # as if the server were still down when the store reconnects
            raise ConnectionRefusedError("connection refused")
        return await asyncpg.connect(
            POSTGRES_URL, server_settings={"application_name": application}
        )

    engine = create_async_engine("postgresql+asyncpg://", async_creator=connect)
    try:
        async with SQLStore(engine, sql_table=table, pool_size=2) as store:
            await store.write("k", b"before")
            admin = await asyncpg.connect(POSTGRES_URL)
            try:
                killed = await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = $1",
                    application,
                )
            finally:
                await admin.close()
            assert killed == 2

            with pytest.raises(ServiceUnavailable):  # found the connection dropped
                await store.write("k", b"after")
            refuse = True
            for _ in range(2):
                with pytest.raises(ServiceUnavailable, match="refused"):
                    await store.read("k")
            refuse = False
            failures = 0
            for _ in range(4):  # the other dropped connection fails once, if it is used
                try:
                    await store.write("k", b"after")
                except ServiceUnavailable:
                    failures += 1
            assert failures <= 1
            for _ in range(5):
                assert (await store.read("k"))[0].value == b"after"
    finally:
        await engine.dispose()
        await drop_table(table)
