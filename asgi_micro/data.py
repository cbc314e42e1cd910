"""Typed data on SQLModel: tables declared as classes, one async engine per service, a session
per call.

    class Item(SQLModel, table=True):
        id: int | None = Field(default=None, primary_key=True)
        name: str

    @router.post("/items")
    async def create(item: Item, session: Session) -> Item:
        session.add(item)
        await session.commit()
        return item

``Database`` runs an SQLAlchemy ``AsyncEngine`` on the URL schemes the store takes:
``sqlite:///.micro/data.db`` (aiosqlite, the embedded default), ``postgresql://`` or
``postgres://`` and ``cockroachdb://`` (asyncpg). SQLite connections get what the store's get:
WAL, ``synchronous = FULL`` and a busy timeout, and foreign keys are enforced. At ``start()``
it creates the tables of its metadata that are missing (in development), or runs
``migrate(connection)`` instead (in production; Alembic, see docs/data.md), in one transaction.

A session's objects outlive its commits (``expire_on_commit=False``): a handler may return
what it committed, and the reply is encoded after the session has closed. Load what a reply
needs before returning it; a lazy relationship cannot load once the session is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final

import sqlalchemy as sa
from fastapi import Depends
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from .context import Context
from .errors import ServiceUnavailable
from .plugins import Pluggable
from .rpc import micro_dependency
from .store.sql import DRIVERS, speak_cockroachdb

if TYPE_CHECKING:
    from .pipeline import Host
    from .plugins import Parts

__all__ = [
    "DEFAULT_URL",
    "Database",
    "Migrate",
    "Session",
    "async_url",
    "database_of",
    "open_session",
]

DEFAULT_URL: Final = "sqlite:///.micro/data.db"
"""The embedded default: a SQLite file under ``.micro/`` in the working directory."""

Migrate = Callable[[AsyncConnection], Awaitable[None]]
"""Brings the schema up to date at ``start()``, on a connection inside a transaction:
``async def migrate(connection: AsyncConnection) -> None``."""


class Database(Pluggable):
    """An async engine on one database, the tables of ``metadata`` in it, and sessions on it.

    Pass an ``AsyncEngine`` (``stop()`` leaves it open), or use ``from_url``. At ``start()``:
    ``migrate(connection)`` when given, else, with ``create_tables`` (the default), the
    tables of ``metadata`` (``SQLModel.metadata`` unless given) that do not exist yet.
    ``schema`` (PostgreSQL) puts the service's tables in a schema of their own, created at
    ``start()`` if missing: several services can share one database without sharing tables.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        metadata: sa.MetaData | None = None,
        create_tables: bool = True,
        migrate: Migrate | None = None,
        schema: str | None = None,
    ) -> None:
        if migrate is not None and not callable(migrate):
            raise TypeError(f"migrate is an async callable (connection), got {migrate!r}")
        if schema is not None and engine.dialect.name == "sqlite":
            raise ValueError("schema is for PostgreSQL; a SQLite database has no schemas")
        self.engine = engine
        self.metadata = SQLModel.metadata if metadata is None else metadata
        self.create_tables = create_tables
        self.migrate = migrate
        self.schema = schema
        self.url = engine.url.render_as_string(hide_password=True)
        self._owns_engine = False
        self._started = False
        self._lock = asyncio.Lock()

    @classmethod
    def from_url(
        cls,
        url: str = DEFAULT_URL,
        *,
        parts: Parts | None = None,
        metadata: sa.MetaData | None = None,
        create_tables: bool = True,
        migrate: Migrate | None = None,
        schema: str | None = None,
        pool_size: int = 5,
        busy_timeout: float = 5.0,
        echo: bool = False,
    ) -> Database:
        """A database on ``url``; the engine it creates is disposed of at ``stop()``.

        ``pool_size`` connections at most stay open; ``busy_timeout`` is how long a SQLite
        connection waits for another's write; ``echo`` logs every statement."""
        parsed = async_url(url)
        options: dict[str, Any] = {"echo": echo}
        in_memory = parsed.drivername.startswith("sqlite") and parsed.database in (
            None,
            "",
            ":memory:",
        )
        if not in_memory:  # an in-memory SQLite database is one connection, kept static
            options.update(pool_size=pool_size, max_overflow=0)
        if schema is not None and parsed.drivername == "postgresql+asyncpg":
            options["connect_args"] = {"server_settings": {"search_path": schema}}
        engine = create_async_engine(parsed, **options)
        if parsed.drivername.startswith("sqlite"):
            _tune_sqlite(engine, busy_timeout=busy_timeout)
        if make_url(url).drivername == "cockroachdb":
            speak_cockroachdb(engine)
        database = cls(
            engine, metadata=metadata, create_tables=create_tables, migrate=migrate, schema=schema
        )
        database._owns_engine = True
        return database

    @property
    def started(self) -> bool:
        return self._started

    async def start(self) -> None:
        """Create the tables, or migrate (with neither to do, nothing: the database opens on
        the first session); called again it does nothing."""
        async with self._lock:
            if self._started:
                return
            url = self.engine.url
            if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
                Path(str(url.database)).parent.mkdir(parents=True, exist_ok=True)
            if (
                self.migrate is None
                and self.schema is None
                and not (self.create_tables and self.metadata.tables)
            ):
                # Nothing to create: a service that keeps no tables opens no database (and
                # makes no file) until a session asks for one.
                self._started = True
                return
            try:
                async with self.engine.begin() as connection:
                    if self.schema is not None:
                        await connection.execute(
                            sa.schema.CreateSchema(self.schema, if_not_exists=True)
                        )
                    if self.migrate is not None:
                        await self.migrate(connection)
                    elif self.create_tables:
                        await connection.run_sync(self.metadata.create_all)
            except (OSError, sa.exc.DBAPIError) as exc:
                raise ServiceUnavailable(f"database {self.url} cannot start: {exc}") from exc
            self._started = True

    async def stop(self) -> None:
        """Close the engine's connections (an engine given to the constructor stays usable);
        called again it does nothing."""
        async with self._lock:
            if not self._started:
                return
            self._started = False
            if self._owns_engine:
                await self.engine.dispose()

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session, closed on exit: what it did not commit is rolled back."""
        if not self._started:
            raise RuntimeError(f"{self!r} is not started")
        async with AsyncSession(self.engine, expire_on_commit=False) as session:
            yield session


def async_url(url: str) -> URL:
    """``url`` with the async driver its scheme runs on (``postgresql://`` ->
    ``postgresql+asyncpg://``); a URL that names a driver keeps it."""
    parsed = make_url(url)
    driver = DRIVERS.get(parsed.drivername)
    if driver is not None:
        return parsed.set(drivername=driver)
    if "+" in parsed.drivername:
        return parsed
    raise ValueError(f"no database for {parsed.drivername}://; use one of {sorted(DRIVERS)}")


def _tune_sqlite(engine: AsyncEngine, *, busy_timeout: float) -> None:
    """The store's PRAGMAs on every connection: WAL, writes on disk when they return, waits
    for another writer rather than failing; and the foreign keys a model declares enforced."""
    pragmas = [
        "journal_mode = WAL",
        "synchronous = FULL",
        f"busy_timeout = {int(busy_timeout * 1000)}",
        "foreign_keys = ON",
    ]

    @sa.event.listens_for(engine.sync_engine, "connect")
    def on_connect(connection: Any, record: Any) -> None:
        cursor = connection.cursor()
        try:
            for pragma in pragmas:
                cursor.execute(f"PRAGMA {pragma}")
        finally:
            cursor.close()


def database_of(host: Host | None) -> Database:
    """The ``Database`` of the running service, or a clear error saying how to give it one."""
    database = getattr(host, "database", None)
    if isinstance(database, Database):
        return database
    raise RuntimeError(
        "no database for this dependency; give the service one: Service(..., database=...) "
        "or MICRO_DATABASE"
    )


async def open_session(host: Host | None, context: Context) -> AsyncIterator[AsyncSession]:
    """The session of one call on the service's database, closed when the call is over: a
    dependency in FastAPI's ``yield`` style, taking what asgi-micro's resolvers take."""
    async with database_of(host).session() as session:
        yield session


Session = Annotated[AsyncSession, Depends(micro_dependency(open_session))]
"""An ``AsyncSession`` on the service's database for one call, closed once the call is over
(after the response, over HTTP): ``async def create(item: Item, session: Session) -> Item``.
It resolves on the fast path, over gRPC and for events as well as through FastAPI."""
