"""Locks in the SQL store's database: ``sqlite:///path.db``, ``postgresql://...``, ``store://``.

Leases live in ``<sql_table>_lock`` beside the store's table: one row per lock name (``owner``,
``token``, ``expires_at``, and the waiter next in line: ``waiter``, ``waiter_since``,
``waiter_until``), kept after release so that its token is a durable counter. Each step is
one statement: acquiring is an upsert that takes the row only when it has expired and no
other waiter's claim stands, and adds one to its token; claiming updates the waiter columns
unless a longer waiter's live claim stands; renewing and releasing match the owner and the
token. PostgreSQL
judges expiry by its own clock (``clock_timestamp()``); SQLite, which has no server, by the
clock of the process asking, which is the clock of the machine that holds the file.

``store://`` uses the service's own store (``Parts.store``, a ``SQLStore``), which the service
starts and stops; any other URL makes a store of its own, closed at ``stop()``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..errors import ServiceUnavailable
from ..store.sql import SQLStore
from .base import Sync

if TYPE_CHECKING:
    from ..plugins import Parts

__all__ = ["LockStatements", "StoreSync"]

_POSTGRES_NOW = "extract(epoch FROM clock_timestamp())::float8"


class LockStatements:
    """The SQL of the lock table; SQLite's statements take the time as their last argument."""

    def __init__(self, table: str, *, sqlite: bool) -> None:
        self.table = table
        self.sqlite = sqlite

        def now(position: int) -> str:
            return f"?{position}" if sqlite else _POSTGRES_NOW

        def sql(text: str) -> str:
            return text.replace("$", "?") if sqlite else text

        self.create = (
            f"CREATE TABLE IF NOT EXISTS {table} (name TEXT PRIMARY KEY, owner TEXT, "
            "token BIGINT NOT NULL, expires_at DOUBLE PRECISION NOT NULL, waiter TEXT, "
            "waiter_since DOUBLE PRECISION, waiter_until DOUBLE PRECISION)"
        )
        self.acquire = sql(
            f"INSERT INTO {table} (name, owner, token, expires_at) VALUES ($1, $2, 1, "
            f"{now(4)} + $3) ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, "
            f"token = {table}.token + 1, expires_at = excluded.expires_at, waiter = NULL "
            f"WHERE {table}.expires_at <= {now(4)} AND ({table}.waiter IS NULL "
            f"OR {table}.waiter = $2 OR {table}.waiter_until <= {now(4)}) RETURNING token"
        )
        self.claim = sql(
            f"UPDATE {table} SET waiter = $2, waiter_since = $3, waiter_until = {now(5)} + $4 "
            f"WHERE name = $1 AND (waiter IS NULL OR waiter = $2 OR waiter_until <= {now(5)} "
            "OR waiter_since > $3) RETURNING token"
        )
        self.renew = sql(
            f"UPDATE {table} SET expires_at = {now(5)} + $4 WHERE name = $1 AND owner = $2 "
            f"AND token = $3 AND expires_at > {now(5)} RETURNING token"
        )
        self.release = sql(
            f"UPDATE {table} SET owner = NULL, expires_at = 0 "
            "WHERE name = $1 AND owner = $2 AND token = $3 RETURNING token"
        )

    def args(self, *args: Any) -> tuple[Any, ...]:
        """``args`` and, on SQLite, the time now."""
        return (*args, time.time()) if self.sqlite else args


class StoreSync(Sync):
    """Leases in a table of ``store``'s database. ``owns_store``: start and stop it too."""

    def __init__(self, store: SQLStore, *, owns_store: bool = False) -> None:
        super().__init__()
        self.store = store
        self.url = store.url
        self.owns_store = owns_store
        self.statements = LockStatements(
            f"{store.statements.table}_lock", sqlite=store.statements.dialect == "sqlite"
        )

    @classmethod
    def from_url(cls, url: str, *, parts: Parts | None = None) -> StoreSync:
        if url.partition(":")[0].lower() == "store":
            store = parts.store if parts is not None else None
            if not isinstance(store, SQLStore):
                raise ValueError(
                    f"store:// locks need the service's store to be SQL, got {store!r}; "
                    "use memory:// or a sqlite:// or postgresql:// URL"
                )
            sync = cls(store)
            sync.url = "store://"
            return sync
        return cls(SQLStore.from_url(url, pool_size=2), owns_store=True)

    async def _open(self) -> None:
        await self.store.start()
        try:
            await self._fetch(self.statements.create)
        except ServiceUnavailable:  # PostgreSQL: another process made it at the same moment
            await self._fetch(self.statements.create)

    async def _close(self) -> None:
        if self.owns_store:
            await self.store.stop()

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        return await self.store._fetch(write=True, sql=sql, args=args)

    async def _acquire(self, name: str, owner: str, ttl: float) -> int | None:
        statements = self.statements
        rows = await self._fetch(statements.acquire, *statements.args(name, owner, float(ttl)))
        return int(rows[0][0]) if rows else None

    async def _claim(self, name: str, owner: str, since: float, claim: float) -> bool:
        statements = self.statements
        return bool(
            await self._fetch(statements.claim, *statements.args(name, owner, since, claim))
        )

    async def _renew(self, name: str, owner: str, token: int, ttl: float) -> bool:
        statements = self.statements
        return bool(
            await self._fetch(statements.renew, *statements.args(name, owner, token, float(ttl)))
        )

    async def _release(self, name: str, owner: str, token: int) -> None:
        await self._fetch(self.statements.release, name, owner, token)
