"""``Database``: tables created at start in development, the migrate hook instead in
production, an idempotent lifecycle, and SQLite tuned as the store tunes it."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import Field, SQLModel, col, select

from asgi_micro import errors
from asgi_micro.data import DEFAULT_URL, Database, async_url
from tests.data.conftest import Backend

metadata = sa.MetaData()  # tables of this module only, apart from SQLModel.metadata


class Note(SQLModel, table=True):
    metadata = metadata
    id: int | None = Field(default=None, primary_key=True)
    text: str


class Tag(SQLModel, table=True):
    metadata = metadata
    name: str = Field(primary_key=True)


async def tables(database: Database) -> list[str]:
    async with database.engine.connect() as connection:
        names: list[str] = await connection.run_sync(
            lambda sync: sa.inspect(sync).get_table_names()
        )
    return sorted(names)


async def test_tables_are_created_at_start_and_rows_survive_a_restart(backend: Backend) -> None:
    async with backend.database(metadata=metadata) as database:
        assert await tables(database) == ["note", "tag"]
        async with database.session() as session:
            session.add(Note(text="kept"))
            await session.commit()
            session.add(Note(text="never committed"))
        await database.start()  # again: nothing happens
    assert not database.started
    with pytest.raises(RuntimeError, match="is not started"):
        async with database.session():
            pass
    async with backend.database(metadata=metadata) as reopened, reopened.session() as session:
        texts = (await session.exec(select(Note.text).order_by(col(Note.id)))).all()
    assert texts == ["kept"]  # what the session did not commit was rolled back


async def test_migrate_runs_instead_of_creating_tables(backend: Backend) -> None:
    calls: list[AsyncConnection] = []

    async def migrate(connection: AsyncConnection) -> None:
        calls.append(connection)
        assert connection.in_transaction()
        await connection.run_sync(Note.__table__.create)  # type: ignore[attr-defined]

    database = backend.database(metadata=metadata, migrate=migrate)
    async with database:
        await database.start()
        assert len(calls) == 1  # once per start, however often start() is called
        assert await tables(database) == ["note"]  # what migrate made; create_all would add tag
        async with database.session() as session:
            session.add(Note(text="migrated"))
            await session.commit()
            [note] = (await session.exec(select(Note))).all()
    assert note.text == "migrated"


async def test_no_tables_without_create_tables(backend: Backend) -> None:
    async with backend.database(metadata=metadata, create_tables=False) as database:
        assert await tables(database) == []


async def test_sqlite_runs_in_wal_with_full_sync_and_foreign_keys(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "data.db"  # the directory is created at start
    async with (
        Database.from_url(f"sqlite:///{path}", metadata=metadata, busy_timeout=2.5) as database,
        database.session() as session,
    ):
        pragmas = {
            name: (await session.exec(sa.text(f"PRAGMA {name}"))).scalar()  # type: ignore[call-overload]
            for name in ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")
        }
    assert pragmas == {
        "journal_mode": "wal",
        "synchronous": 2,
        "busy_timeout": 2500,
        "foreign_keys": 1,
    }
    assert path.exists()


async def test_an_unreachable_database_fails_to_start_with_service_unavailable() -> None:
    database = Database.from_url("postgresql://postgres@127.0.0.1:1/test", metadata=metadata)
    with pytest.raises(errors.ServiceUnavailable, match="cannot start"):
        await database.start()
    assert not database.started


def test_urls_take_the_async_drivers_the_store_uses() -> None:
    assert DEFAULT_URL == "sqlite:///.micro/data.db"
    assert async_url(DEFAULT_URL).drivername == "sqlite+aiosqlite"
    for url in ("postgresql://u@h/db", "postgres://u@h/db", "cockroachdb://u@h/db"):
        assert async_url(url).drivername == "postgresql+asyncpg"
    assert async_url("postgresql+asyncpg://u@h/db").drivername == "postgresql+asyncpg"
    with pytest.raises(ValueError, match="no database for mysql://"):
        async_url("mysql://u@h/db")
    with pytest.raises(ValueError, match="schema is for PostgreSQL"):
        Database.from_url("sqlite://", schema="inventory")
