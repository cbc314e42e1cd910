"""The SQL store: SQLite (aiosqlite), PostgreSQL and CockroachDB (asyncpg), through SQLAlchemy.

Every namespace lives in one table, ``micro_store`` unless ``sql_table`` says otherwise, whose
primary key is ``(database_name, table_name, key)``. A prefix read is a range on that key
(``key >= prefix AND key < next(prefix)``), so it walks the index and ``%`` or ``_`` in a key
mean nothing; keys compare as UTF-8 bytes everywhere (PostgreSQL gets ``COLLATE "C"``).

SQLAlchemy builds the engine, the pool and the DDL. At ``start()`` the store checks a few
connections out of the pool for its lifetime and runs its statements, written once per
dialect, on the driver connections underneath: one statement per operation, autocommitted,
with no per-call pool checkout, so an operation costs what the raw driver costs. SQLite gets
one writer connection (writes queue in the process rather than spin on the file lock) and
read-only readers, WAL and ``synchronous=FULL``: a write is on disk when it returns.

A fenced write runs in one transaction with an upsert of its lock's row in ``<sql_table>_fence``
(``name``, highest ``token``) that only raises the token; the table is made on the first one.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import re
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.schema import CreateIndex, CreateTable

from ..errors import STORE_ID, ServiceUnavailable
from .base import ABSENT, DEFAULT_DATABASE, DEFAULT_TABLE, MAX_VALUE_SIZE, Fence, Record, Store

if TYPE_CHECKING:
    from ..plugins import Parts

__all__ = ["DRIVERS", "SQLStore", "Statements", "speak_cockroachdb"]

logger = logging.getLogger(__name__)

DRIVERS: Final = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "cockroachdb": "postgresql+asyncpg",
}
"""URL scheme -> the SQLAlchemy async driver it runs on."""

SWEEP_BATCH: Final = 1000
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_COLUMNS = "value, metadata, expires_at, version"
_LIVE = "(expires_at IS NULL OR expires_at > {now})"
_CREATION_LOCK = sa.text("SELECT pg_advisory_lock(hashtext(:table))")
_CREATION_UNLOCK = sa.text("SELECT pg_advisory_unlock(hashtext(:table))")


class Statements:
    """The SQL the store runs on one table, in PostgreSQL's ``$n`` style or SQLite's ``?n``."""

    def __init__(self, table: str, *, dialect: str) -> None:
        self.dialect = dialect
        self.table = table
        key = "database_name = $1 AND table_name = $2 AND key = $3"
        self.read_key = self._sql(
            f"SELECT {_COLUMNS} FROM {table} WHERE {key} AND {_LIVE.format(now='$4')}"
        )
        self.version = self._sql(
            f"SELECT version FROM {table} WHERE {key} AND {_LIVE.format(now='$4')}"
        )
        insert = (
            f"INSERT INTO {table} "
            "(database_name, table_name, key, value, metadata, expires_at, version) "
            "VALUES ($1, $2, $3, $4, $5, $6, 1) "
            "ON CONFLICT (database_name, table_name, key) DO UPDATE SET "
            "value = excluded.value, metadata = excluded.metadata, "
            "expires_at = excluded.expires_at, "
        )
        # An expired row that was not swept yet counts as absent: writing over it restarts at 1.
        self.upsert = self._sql(
            f"{insert}version = CASE WHEN {table}.expires_at <= $7 THEN 1 "
            f"ELSE {table}.version + 1 END RETURNING version"
        )
        self.insert_if_absent = self._sql(
            f"{insert}version = 1 WHERE {table}.expires_at <= $7 RETURNING version"
        )
        self.update_if_version = self._sql(
            f"UPDATE {table} SET value = $4, metadata = $5, expires_at = $6, "
            f"version = version + 1 WHERE {key} AND version = $8 AND {_LIVE.format(now='$7')} "
            "RETURNING version"
        )
        self.delete = self._sql(f"DELETE FROM {table} WHERE {key} RETURNING expires_at")
        self.delete_if_version = self._sql(
            f"DELETE FROM {table} WHERE {key} AND version = $4 AND {_LIVE.format(now='$5')} "
            "RETURNING version"
        )
        self.sweep = self._sql(
            f"DELETE FROM {table} WHERE (database_name, table_name, key) IN "
            f"(SELECT database_name, table_name, key FROM {table} "
            f"WHERE expires_at <= $1 LIMIT {SWEEP_BATCH}) RETURNING version"
        )
        fences = f"{table}_fence"
        self.create_fences = (
            f"CREATE TABLE IF NOT EXISTS {fences} (name TEXT PRIMARY KEY, token BIGINT NOT NULL)"
        )
        self.raise_fence = self._sql(
            f"INSERT INTO {fences} (name, token) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE "
            f"SET token = excluded.token WHERE {fences}.token <= excluded.token RETURNING token"
        )
        self.fence = self._sql(f"SELECT token FROM {fences} WHERE name = $1")
        self.begin = "BEGIN IMMEDIATE" if dialect == "sqlite" else "BEGIN"
        self._ranges: dict[tuple[bool, ...], str] = {}

    def range(
        self,
        *,
        keys_only: bool,
        database: str,
        table: str,
        prefix: str,
        suffix: str,
        limit: int | None,
        offset: int,
        now: float,
    ) -> tuple[str, builtins.list[Any]]:
        """The statement and arguments for live records of a namespace by prefix and suffix."""
        end = _prefix_end(prefix) if prefix else None
        args: list[Any] = [database, table]
        if prefix:
            args.append(prefix)
            if end is not None:
                args.append(end)
        if suffix:
            args += [len(suffix), suffix]
        args.append(now)
        if limit is not None:
            args.append(limit)
        if offset:
            args.append(offset)
        shape = (
            keys_only,
            bool(prefix),
            end is not None,
            bool(suffix),
            limit is not None,
            bool(offset),
        )
        sql = self._ranges.get(shape)
        if sql is None:
            sql = self._ranges[shape] = self._range_sql(*shape)
        return sql, args

    def _range_sql(
        self,
        keys_only: bool,
        prefix: bool,
        end: bool,
        suffix: bool,
        limit: bool,
        offset: bool,
    ) -> str:
        count = 2

        def arg() -> str:
            nonlocal count
            count += 1
            return f"${count}"

        where = ["database_name = $1", "table_name = $2"]
        if prefix:
            where.append(f"key >= {arg()}")
            if end:
                where.append(f"key < {arg()}")
        if suffix:
            length = arg()
            where.append(
                f"length(key) >= {length} AND substr(key, length(key) - {length} + 1) = {arg()}"
            )
        where.append(_LIVE.format(now=arg()))
        columns = "key" if keys_only else f"key, {_COLUMNS}"
        sql = f"SELECT {columns} FROM {self.table} WHERE {' AND '.join(where)} ORDER BY key"
        if limit:
            sql += f" LIMIT {arg()}"
        elif offset and self.dialect == "sqlite":
            sql += " LIMIT -1"  # SQLite takes OFFSET only after a LIMIT
        if offset:
            sql += f" OFFSET {arg()}"
        return self._sql(sql)

    def _sql(self, sql: str) -> str:
        return sql.replace("$", "?") if self.dialect == "sqlite" else sql


def _prefix_end(prefix: str) -> str | None:
    """The least string above every string that starts with ``prefix``, if there is one."""
    while prefix:
        code = ord(prefix[-1]) + 1
        if code <= 0x10FFFF:
            if 0xD800 <= code <= 0xDFFF:
                code = 0xE000  # surrogates are never in a key
            return prefix[:-1] + chr(code)
        prefix = prefix[:-1]
    return None


def _schema(name: str, *, collate: bool) -> sa.Table:
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("database_name", sa.Text, primary_key=True),
        sa.Column("table_name", sa.Text, primary_key=True),
        sa.Column("key", sa.Text(collation="C" if collate else None), primary_key=True),
        sa.Column("value", sa.LargeBinary, nullable=False),
        sa.Column("metadata", sa.Text, nullable=True),
        sa.Column("expires_at", sa.Double, nullable=True),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Index(f"{name}_expires_at", "expires_at"),
    )


class _Slot:
    """A connection checked out of the engine's pool for the life of the store.

    ``fetch(sql, *args)`` runs a statement and returns its rows, calling straight into the driver
    with no coroutine of its own in between.
    """

    __slots__ = ("broken", "connection", "driver", "fetch")

    def __init__(self, connection: AsyncConnection, driver: Any, *, sqlite: bool) -> None:
        self.connection = connection
        self.driver = driver
        self.broken = False
        self.fetch: Callable[..., Awaitable[list[Any]]] = (
            (lambda sql, *args: driver.execute_fetchall(sql, args)) if sqlite else driver.fetch
        )


class _Pool:
    """Hands each operation one slot; the others wait in line."""

    def __init__(self, slots: list[_Slot]) -> None:
        self.slots = slots
        self._idle = list(slots)
        self._waiters: deque[asyncio.Future[_Slot]] = deque()

    async def acquire(self) -> _Slot:
        if self._idle:
            return self._idle.pop()
        waiter: asyncio.Future[_Slot] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(waiter.result())
            raise

    def release(self, slot: _Slot) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(slot)
                return
        self._idle.append(slot)


class _Shared:
    """What the views of one store share: the engine, the slots and the sweeper."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        owns_engine: bool,
        sql_table: str,
        pool_size: int,
        busy_timeout: float,
        sweep_interval: float,
    ) -> None:
        self.engine = engine
        self.owns_engine = owns_engine
        self.sql_table = sql_table
        self.pool_size = pool_size
        self.busy_timeout = busy_timeout
        self.sweep_interval = sweep_interval
        self.sqlite = engine.dialect.name == "sqlite"
        self.statements = Statements(sql_table, dialect="sqlite" if self.sqlite else "postgresql")
        # what the driver (or SQLAlchemy, opening a connection) raises, and which of those
        # leave the connection unusable
        self.errors: tuple[type[BaseException], ...]
        self.connection_errors: tuple[type[BaseException], ...]
        if self.sqlite:
            import sqlite3

            self.errors, self.connection_errors = (sqlite3.Error, sa.exc.DBAPIError), ()
        else:
            import asyncpg

            self.connection_errors = (
                asyncpg.InterfaceError,
                asyncpg.InternalClientError,
                OSError,
                TimeoutError,
            )
            self.errors = (asyncpg.PostgresError, sa.exc.DBAPIError, *self.connection_errors)
        self.writer: _Pool | None = None
        self.reader: _Pool | None = None
        self.sweeper: asyncio.Task[None] | None = None
        self.lock = asyncio.Lock()
        self.fences_made = False

    @property
    def started(self) -> bool:
        return self.writer is not None

    async def open_slot(self, *, read_only: bool = False) -> _Slot:
        connection = await self.engine.connect()
        try:
            connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
            raw = await connection.get_raw_connection()
            slot = _Slot(connection, raw.driver_connection, sqlite=self.sqlite)
            if self.sqlite:
                pragmas = [f"busy_timeout = {int(self.busy_timeout * 1000)}", "synchronous = FULL"]
                if read_only:
                    pragmas.append("query_only = ON")
                for pragma in pragmas:
                    await slot.driver.execute_fetchall(f"PRAGMA {pragma}")
            return slot
        except BaseException:
            await connection.close()
            raise

    async def reopen(self, slot: _Slot, *, read_only: bool) -> None:
        if not slot.connection.closed:  # a reopen that failed before closed it already
            await slot.connection.invalidate()
            await slot.connection.close()
        fresh = await self.open_slot(read_only=read_only)
        slot.connection, slot.driver, slot.fetch = fresh.connection, fresh.driver, fresh.fetch
        slot.broken = False

    def is_broken(self, driver: Any, error: BaseException) -> bool:
        return isinstance(error, self.connection_errors) or (
            not self.sqlite and bool(driver.is_closed())
        )


class SQLStore(Store):
    """Records in a SQL database that SQLAlchemy reaches through an async driver.

    Pass an ``AsyncEngine`` (the store leaves it open at ``stop()``), or use ``from_url`` with
    ``sqlite:///path.db``, ``postgresql://user@host/db`` or ``cockroachdb://user@host/db``.
    ``pool_size`` connections stay open while the store runs; on SQLite one of them writes.
    ``sql_table`` names the table that holds every namespace; it is created if missing.
    Expired records are swept every ``sweep_interval`` seconds.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        database: str = DEFAULT_DATABASE,
        table: str = DEFAULT_TABLE,
        max_value_size: int = MAX_VALUE_SIZE,
        sql_table: str = "micro_store",
        pool_size: int = 4,
        busy_timeout: float = 5.0,
        sweep_interval: float = 60.0,
    ) -> None:
        super().__init__(database=database, table=table, max_value_size=max_value_size)
        if not _IDENTIFIER.fullmatch(sql_table):
            raise ValueError(f"sql_table must match {_IDENTIFIER.pattern}, got {sql_table!r}")
        if pool_size < (1 if engine.dialect.name != "sqlite" else 2):
            raise ValueError(f"pool_size is too small: {pool_size}")
        if sweep_interval <= 0:
            raise ValueError(f"sweep_interval must be positive, got {sweep_interval}")
        if engine.dialect.name not in ("sqlite", "postgresql", "cockroachdb"):
            raise ValueError(f"no SQL store for the {engine.dialect.name} dialect")
        self.url = engine.url.render_as_string(hide_password=True)
        self._shared = _Shared(
            engine,
            owns_engine=False,
            sql_table=sql_table,
            pool_size=pool_size,
            busy_timeout=busy_timeout,
            sweep_interval=sweep_interval,
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        parts: Parts | None = None,
        database: str = DEFAULT_DATABASE,
        table: str = DEFAULT_TABLE,
        max_value_size: int = MAX_VALUE_SIZE,
        sql_table: str = "micro_store",
        pool_size: int = 4,
        busy_timeout: float = 5.0,
        sweep_interval: float = 60.0,
    ) -> SQLStore:
        """A store on ``url``; the engine it creates is disposed of at ``stop()``."""
        parsed = make_url(url)
        driver = DRIVERS.get(parsed.drivername)
        if driver is None:
            raise ValueError(
                f"no SQL store for {parsed.drivername}://; use one of {sorted(DRIVERS)}"
            )
        in_memory = driver.startswith("sqlite") and parsed.database in (None, "", ":memory:")
        # an in-memory SQLite database lives in one connection, which SQLAlchemy keeps static
        pool_options = {} if in_memory else {"pool_size": pool_size, "max_overflow": 0}
        engine = create_async_engine(parsed.set(drivername=driver), **pool_options)
        if parsed.drivername == "cockroachdb":
            speak_cockroachdb(engine)
        store = cls(
            engine,
            database=database,
            table=table,
            max_value_size=max_value_size,
            sql_table=sql_table,
            pool_size=pool_size,
            busy_timeout=busy_timeout,
            sweep_interval=sweep_interval,
        )
        store.url = parsed.render_as_string(hide_password=True)
        store._shared.owns_engine = True
        return store

    @property
    def statements(self) -> Statements:
        """The SQL this store runs."""
        return self._shared.statements

    async def start(self) -> None:
        shared = self._shared
        async with shared.lock:
            if shared.started:
                return
            engine = shared.engine
            in_memory = shared.sqlite and engine.url.database in (None, "", ":memory:")
            if shared.sqlite and not in_memory:
                Path(str(engine.url.database)).parent.mkdir(parents=True, exist_ok=True)
            slots: list[_Slot] = []
            try:
                writer = await shared.open_slot()
                slots.append(writer)
                await self._create_schema(writer)
                if shared.sqlite and not in_memory:
                    for _ in range(shared.pool_size - 1):
                        slots.append(await shared.open_slot(read_only=True))
                    shared.writer, shared.reader = _Pool(slots[:1]), _Pool(slots[1:])
                else:
                    # one in-memory SQLite database is one connection; PostgreSQL slots do both
                    if not shared.sqlite:
                        for _ in range(shared.pool_size - 1):
                            slots.append(await shared.open_slot())
                    shared.writer = shared.reader = _Pool(slots)
            except BaseException as exc:
                for slot in slots:
                    await slot.connection.close()
                if isinstance(exc, (*shared.errors, OSError)):
                    raise ServiceUnavailable(
                        f"store {self.url} cannot start: {exc}", id=STORE_ID
                    ) from exc
                raise
            shared.sweeper = asyncio.create_task(
                self._sweep_forever(), name="asgi_micro.store.sweep"
            )

    async def stop(self) -> None:
        shared = self._shared
        async with shared.lock:
            if not shared.started:
                return
            if shared.sweeper is not None:
                shared.sweeper.cancel()
                await asyncio.gather(shared.sweeper, return_exceptions=True)
                shared.sweeper = None
            pools = {id(pool): pool for pool in (shared.writer, shared.reader) if pool is not None}
            shared.writer = shared.reader = None
            for pool in pools.values():
                for _ in pool.slots:
                    await pool.acquire()  # waits for the operations under way
                for slot in pool.slots:
                    await slot.connection.close()
            if shared.owns_engine:
                await shared.engine.dispose()

    async def _create_schema(self, slot: _Slot) -> None:
        shared = self._shared
        connection = slot.connection
        if shared.sqlite:
            await slot.driver.execute_fetchall("PRAGMA journal_mode = WAL")
            collate = False
        else:
            version = await connection.exec_driver_sql("SELECT version()")
            # CockroachDB orders STRING by bytes already and has no "C" collation to ask for
            collate = "CockroachDB" not in str(version.scalar())
        schema = _schema(shared.sql_table, collate=collate)
        lock = not shared.sqlite and collate
        if lock:
            # Services that start together on a fresh database race to create the table, and
            # PostgreSQL's IF NOT EXISTS loses that race with a unique violation (pg_type,
            # pg_class): a lock per table, held while creating, has them take turns. A session
            # lock, as the connection autocommits: a transaction's would end with the statement.
            await connection.execute(_CREATION_LOCK, {"table": shared.sql_table})
        try:
            await connection.execute(CreateTable(schema, if_not_exists=True))
            for index in schema.indexes:
                await connection.execute(CreateIndex(index, if_not_exists=True))
            await connection.commit()
        finally:
            if lock:
                await connection.execute(_CREATION_UNLOCK, {"table": shared.sql_table})
                await connection.commit()

    async def _fetch(self, *, write: bool, sql: str, args: Sequence[Any]) -> list[Any]:
        shared = self._shared
        pool = shared.writer if write else shared.reader
        if pool is None:
            raise RuntimeError(f"{self!r} is not started")
        slot = await pool.acquire()
        try:
            if slot.broken:
                await shared.reopen(slot, read_only=shared.sqlite and not write)
            return await slot.fetch(sql, *args)
        except shared.errors as exc:
            slot.broken = shared.is_broken(slot.driver, exc)
            raise ServiceUnavailable(f"store {self.url}: {exc}", id=STORE_ID) from exc
        finally:
            pool.release(slot)

    async def _read_key(self, key: str, now: float) -> Record | None:
        rows = await self._fetch(
            write=False,
            sql=self._shared.statements.read_key,
            args=(self._database, self._table, key, now),
        )
        if not rows:
            return None
        value, metadata, expires_at, version = rows[0]
        return Record(key, value, orjson.loads(metadata) if metadata else {}, expires_at, version)

    async def _read_range(
        self, prefix: str, suffix: str, limit: int | None, offset: int, now: float
    ) -> builtins.list[Record]:
        sql, args = self._shared.statements.range(
            keys_only=False,
            database=self._database,
            table=self._table,
            prefix=prefix,
            suffix=suffix,
            limit=limit,
            offset=offset,
            now=now,
        )
        return [
            Record(key, value, orjson.loads(metadata) if metadata else {}, expires_at, version)
            for key, value, metadata, expires_at, version in await self._fetch(
                write=False, sql=sql, args=args
            )
        ]

    async def _list_keys(
        self, prefix: str, suffix: str, limit: int | None, offset: int, now: float
    ) -> builtins.list[str]:
        sql, args = self._shared.statements.range(
            keys_only=True,
            database=self._database,
            table=self._table,
            prefix=prefix,
            suffix=suffix,
            limit=limit,
            offset=offset,
            now=now,
        )
        return [row[0] for row in await self._fetch(write=False, sql=sql, args=args)]

    def _write_statement(
        self,
        key: str,
        value: bytes,
        metadata: dict[str, str],
        expires_at: float | None,
        if_version: int | None,
        now: float,
    ) -> tuple[str, tuple[Any, ...]]:
        statements = self._shared.statements
        encoded = orjson.dumps(metadata).decode() if metadata else None
        args: tuple[Any, ...] = (self._database, self._table, key, value, encoded, expires_at, now)
        if if_version is None:
            return statements.upsert, args
        if if_version == ABSENT:
            return statements.insert_if_absent, args
        return statements.update_if_version, (*args, if_version)

    async def _write(
        self,
        key: str,
        value: bytes,
        metadata: dict[str, str],
        expires_at: float | None,
        if_version: int | None,
        now: float,
    ) -> int:
        sql, args = self._write_statement(key, value, metadata, expires_at, if_version, now)
        rows = await self._fetch(write=True, sql=sql, args=args)
        if not rows:
            raise self._conflict(key, if_version or ABSENT, await self._version(key, now))
        version: int = rows[0][0]
        return version

    async def _write_fenced(
        self,
        key: str,
        value: bytes,
        metadata: dict[str, str],
        expires_at: float | None,
        if_version: int | None,
        now: float,
        fence: Fence,
    ) -> int:
        shared = self._shared
        statements = shared.statements
        if not shared.fences_made:
            await self._fetch(write=True, sql=statements.create_fences, args=())
            shared.fences_made = True
        sql, args = self._write_statement(key, value, metadata, expires_at, if_version, now)
        pool = shared.writer
        if pool is None:
            raise RuntimeError(f"{self!r} is not started")
        slot = await pool.acquire()
        try:
            if slot.broken:
                await shared.reopen(slot, read_only=False)
            await slot.fetch(statements.begin)
            try:
                fenced = await slot.fetch(statements.raise_fence, fence.name, fence.token)
                rows = await slot.fetch(sql, *args) if fenced else []
                await slot.fetch("COMMIT" if fenced and rows else "ROLLBACK")
            except BaseException:
                slot.broken = True  # it may be inside the transaction: reopened on its next use
                raise
        except shared.errors as exc:
            slot.broken = slot.broken or shared.is_broken(slot.driver, exc)
            raise ServiceUnavailable(f"store {self.url}: {exc}", id=STORE_ID) from exc
        finally:
            pool.release(slot)
        if not fenced:
            found = await self._fetch(write=False, sql=statements.fence, args=(fence.name,))
            raise self._fenced_out(fence, found[0][0] if found else None)
        if not rows:
            raise self._conflict(key, if_version or ABSENT, await self._version(key, now))
        version: int = rows[0][0]
        return version

    async def _delete(self, key: str, if_version: int | None, now: float) -> bool:
        statements = self._shared.statements
        namespace = (self._database, self._table, key)
        if if_version is None:
            rows = await self._fetch(write=True, sql=statements.delete, args=namespace)
            return bool(rows) and (rows[0][0] is None or rows[0][0] > now)
        rows = await self._fetch(
            write=True, sql=statements.delete_if_version, args=(*namespace, if_version, now)
        )
        if not rows:
            raise self._conflict(key, if_version, await self._version(key, now))
        return True

    async def _version(self, key: str, now: float) -> int | None:
        """The live version at ``key``, for the message of a lost compare-and-set."""
        rows = await self._fetch(
            write=False,
            sql=self._shared.statements.version,
            args=(self._database, self._table, key, now),
        )
        return rows[0][0] if rows else None

    async def _sweep(self, now: float) -> int:
        swept = 0
        while True:
            rows = await self._fetch(write=True, sql=self._shared.statements.sweep, args=(now,))
            swept += len(rows)
            if len(rows) < SWEEP_BATCH:
                return swept

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._shared.sweep_interval)
            try:
                swept = await self.sweep()
            except ServiceUnavailable as exc:
                logger.warning("sweeping %r failed: %s", self, exc)
            else:
                if swept:
                    logger.debug("swept %d expired records from %r", swept, self)


def speak_cockroachdb(engine: AsyncEngine) -> None:
    """Let SQLAlchemy's PostgreSQL dialect connect to CockroachDB.

    The dialect reads the server version from ``version()``, which CockroachDB answers with its
    own name; it speaks PostgreSQL 13's protocol, which is all the dialect needs to know.
    """

    def server_version(connection: Any) -> tuple[int, ...]:
        return (13, 0)

    engine.sync_engine.dialect._get_server_version_info = server_version  # type: ignore[method-assign]
