"""The embedded broker's outbox: the events a publisher accepted and has not delivered, in SQLite.

One row per event (``events``) and one per copy still to deliver (``deliveries``: to a node,
for a broadcast subscription, or to a queue group), with the number of deliveries made so far
and when the next attempt is due; ``groups`` holds the queue groups seen, so that a publisher
started again still knows a group whose members are all down.

A file belongs to one process at a time: it is locked (``flock`` on ``<file>.lock``) while a
broker holds it, and the lock goes with the process, however it ends. Under a default name
(``.micro/outbox-<service>.db``) a second process of the same service in the same directory
takes ``outbox-<service>-2.db``, and so on; a process that starts takes the first file no
running process holds, which is how a publisher started again resumes what it accepted.

Writes are committed together (group commit): the publishes and settlements that arrive while
a transaction commits go into the next one, so a commit (WAL, ``synchronous=FULL``: on disk
when it returns) serves many of them. ``synchronous="normal"`` leaves the syncing to SQLite's
checkpoints: what was committed survives the process being killed, not the machine losing
power. SQLAlchemy builds the engine and the tables; the
statements run on the aiosqlite connections underneath, as in ``asgi_micro.store.sql``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: one process per outbox is up to the user
    fcntl = None  # type: ignore[assignment]

__all__ = ["NewEvent", "Outbox", "Pending", "Target", "candidates"]

logger = logging.getLogger(__name__)

_ALTERNATIVES = 64
_BUSY_TIMEOUT_MS = 5000


@dataclass(frozen=True, slots=True)
class Target:
    """Where one copy of an event goes: a node (its broadcast subscription) or a queue group."""

    node: str | None = None
    queue: str | None = None


@dataclass(frozen=True, slots=True)
class NewEvent:
    topic: str
    headers: dict[str, str]
    body: bytes
    created: float
    targets: tuple[Target, ...]


@dataclass(slots=True)
class Pending:
    """One copy due for delivery."""

    id: int
    seq: int
    topic: str
    headers: dict[str, str]
    body: bytes
    created: float
    node: str | None
    queue: str | None
    attempts: int  # deliveries made so far: the next one is number attempts + 1
    failures: int  # attempts in a row that reached no subscriber (for the backoff)


def candidates(path: Path, *, alternatives: bool) -> list[Path]:
    """The files a broker may take, in order: ``path``, then ``<stem>-2<suffix>``..."""
    if not alternatives:
        return [path]
    return [path] + [
        path.with_name(f"{path.stem}-{n}{path.suffix}") for n in range(2, _ALTERNATIVES + 1)
    ]


def _schema() -> sa.MetaData:
    metadata = sa.MetaData()
    sa.Table(
        "events",
        metadata,
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("topic", sa.Text, nullable=False, index=True),
        sa.Column("headers", sa.LargeBinary, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("created", sa.Double, nullable=False),
    )
    sa.Table(
        "deliveries",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.Integer, nullable=False, index=True),
        sa.Column("node", sa.Text, nullable=True),
        sa.Column("queue", sa.Text, nullable=True, index=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("next_at", sa.Double, nullable=False, index=True),
    )
    sa.Table(
        "groups",
        metadata,
        sa.Column("topic", sa.Text, primary_key=True),
        sa.Column("queue", sa.Text, primary_key=True),
        sa.Column("seen", sa.Double, nullable=False),
    )
    return metadata


_DUE = (
    "SELECT d.id, d.seq, e.topic, e.headers, e.body, e.created, d.node, d.queue, "
    "d.attempts, d.failures FROM deliveries d JOIN events e ON e.seq = d.seq "
    "WHERE d.next_at <= ? AND d.id NOT IN (SELECT value FROM json_each(?)) "
    "ORDER BY d.next_at, d.id LIMIT ?"
)
_NEXT_DUE = "SELECT MIN(next_at) FROM deliveries WHERE id NOT IN (SELECT value FROM json_each(?))"
_DELETE_ORPHANS = (
    "DELETE FROM events WHERE seq IN (SELECT value FROM json_each(?)) "
    "AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.seq = events.seq)"
)

Operation = Callable[[Any], Awaitable[None]]


@dataclass(slots=True, eq=False)
class _Batch:
    """Rows that one transaction inserts, deletes and updates."""

    events: list[tuple[Any, ...]] = field(default_factory=list)
    deliveries: list[tuple[Any, ...]] = field(default_factory=list)
    done: list[tuple[int]] = field(default_factory=list)
    seqs: set[int] = field(default_factory=set)
    again: list[tuple[float, int, int, int]] = field(default_factory=list)
    committed: asyncio.Future[None] = field(init=False)

    async def write(self, writer: Any) -> None:
        if self.events:
            await writer.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?)", self.events)
        if self.deliveries:
            await writer.executemany(
                "INSERT INTO deliveries VALUES (?, ?, ?, ?, ?, ?, ?)", self.deliveries
            )
        if self.done:
            await writer.executemany("DELETE FROM deliveries WHERE id = ?", self.done)
            await writer.execute(_DELETE_ORPHANS, (orjson.dumps(sorted(self.seqs)).decode(),))
        if self.again:
            await writer.executemany(
                "UPDATE deliveries SET next_at = ?, attempts = ?, failures = ? WHERE id = ?",
                self.again,
            )


class Outbox:
    """The outbox in the first free file of ``paths`` (see ``candidates``)."""

    def __init__(self, paths: Sequence[Path], *, synchronous: str = "full") -> None:
        if synchronous not in ("full", "normal"):
            raise ValueError(f"synchronous is full or normal, got {synchronous!r}")
        self.paths = list(paths)
        self.synchronous = synchronous
        self.path: Path | None = None
        self._lock: int | None = None
        self._engine: AsyncEngine | None = None
        self._connections: list[AsyncConnection] = []
        self._writer: Any = None  # the aiosqlite connections underneath
        self._reader: Any = None
        self._seq = 0
        self._id = 0
        self._queue: list[tuple[Operation, asyncio.Future[None]]] = []
        self._more = asyncio.Event()
        self._closing = False
        self._committer: asyncio.Task[None] | None = None
        self._open_batch: _Batch | None = None

    @property
    def opened(self) -> bool:
        return self._committer is not None

    def claim(self, *, existing: bool) -> bool:
        """Lock the first file no other broker holds (only one that exists, if ``existing``);
        whether one was free."""
        if self._lock is not None:
            return True
        for path in self.paths:
            if existing and not path.exists():
                continue
            if fcntl is None:
                self.path = path
                return True
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)
                continue
            self.path, self._lock = path, descriptor
            return True
        return False

    async def open(self) -> None:
        """Claim a file (see ``claim``) and open it; idempotent."""
        if self.opened:
            return
        if not self.claim(existing=False):
            raise RuntimeError(
                f"every outbox file is held by another process: {', '.join(map(str, self.paths))}"
            )
        assert self.path is not None
        try:
            engine = create_async_engine(f"sqlite+aiosqlite:///{self.path}")
            self._engine = engine
            writer = await self._connect(engine)
            async with engine.begin() as connection:
                await connection.run_sync(_schema().create_all)
            reader = await self._connect(engine)
            self._writer, self._reader = writer, reader
            [(seq, id_)] = await reader.execute_fetchall(
                "SELECT (SELECT COALESCE(MAX(seq), 0) FROM events), "
                "(SELECT COALESCE(MAX(id), 0) FROM deliveries)"
            )
            self._seq, self._id = seq, id_
        except BaseException:
            await self._close_connections()
            self._release()
            raise
        self._committer = asyncio.create_task(self._commit_forever(), name="asgi-micro outbox")

    async def _connect(self, engine: AsyncEngine) -> Any:
        connection = await engine.connect()
        connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
        self._connections.append(connection)
        raw = await connection.get_raw_connection()
        driver: Any = raw.driver_connection
        for pragma in (
            "journal_mode = WAL",
            f"synchronous = {self.synchronous.upper()}",
            f"busy_timeout = {_BUSY_TIMEOUT_MS}",
        ):
            await driver.execute_fetchall(f"PRAGMA {pragma}")
        return driver

    async def close(self) -> None:
        """Commit what is queued, close the file and give it up; idempotent."""
        committer, self._committer = self._committer, None
        if committer is not None:
            self._closing = True
            self._more.set()
            try:
                await committer
            finally:
                self._closing = False
        await self._close_connections()
        self._release()

    async def _close_connections(self) -> None:
        for connection in self._connections:
            with contextlib.suppress(Exception):
                await connection.close()
        self._connections.clear()
        self._writer = self._reader = None
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    def _release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # the flock goes with the descriptor
            self._lock = None
        self.path = None

    # -- writing --------------------------------------------------------------------------------

    async def _write(self, operation: Operation) -> None:
        """Run ``operation`` in the next transaction; returns once that committed."""
        if self._committer is None or self._closing:
            raise RuntimeError("the outbox is not open")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((operation, done))
        self._more.set()
        await done

    async def _commit_forever(self) -> None:
        while True:
            await self._more.wait()
            self._more.clear()
            batch, self._queue = self._queue, []
            if not batch:
                if self._closing:
                    return
                continue
            self._more.set()  # look again after this batch: closing, or more came
            try:
                await self._commit([operation for operation, _ in batch])
            except Exception:
                # One bad operation must not fail the others: each in a transaction of its own.
                for operation, done in batch:
                    try:
                        await self._commit([operation])
                    except Exception as exc:
                        if not done.done():
                            done.set_exception(exc)
                    else:
                        if not done.done():
                            done.set_result(None)
                continue
            for _, done in batch:
                if not done.done():
                    done.set_result(None)

    async def _commit(self, operations: list[Operation]) -> None:
        writer = self._writer
        await writer.execute("BEGIN IMMEDIATE")
        try:
            for operation in operations:
                await operation(writer)
        except BaseException:
            await writer.execute("ROLLBACK")
            raise
        await writer.execute("COMMIT")

    async def add(self, events: Sequence[NewEvent]) -> None:
        """Store ``events`` with a delivery per target, due now; returns once committed."""
        batch = self._batch()
        for event in events:
            self._seq += 1
            batch.events.append(
                (self._seq, event.topic, orjson.dumps(event.headers), event.body, event.created)
            )
            for target in event.targets:
                self._id += 1
                batch.deliveries.append((self._id, self._seq, target.node, target.queue, 0, 0, 0.0))
        await batch.committed

    async def settle(
        self,
        *,
        done: Collection[Pending] = (),
        again: Collection[tuple[Pending, float]] = (),
    ) -> None:
        """Delete the deliveries ``done`` (and the events left with none), and make each of
        ``again`` due at the given time with its ``attempts`` and ``failures`` as they are."""
        batch = self._batch()
        for pending in done:
            batch.done.append((pending.id,))
            batch.seqs.add(pending.seq)
        batch.again.extend((at, p.attempts, p.failures, p.id) for p, at in again)
        await batch.committed

    def _batch(self) -> _Batch:
        """The rows the next transaction writes: every ``add`` and ``settle`` until it runs
        goes into one set of statements."""
        batch = self._open_batch
        if batch is None or batch.committed.done():  # done already: it failed before running
            batch = self._open_batch = _Batch()

            async def write(writer: Any) -> None:
                if self._open_batch is batch:
                    self._open_batch = None
                await batch.write(writer)

            batch.committed = asyncio.ensure_future(self._write(write))
        return batch

    async def wake(self, topic: str, queue: str | None, now: float) -> None:
        """Make the deliveries to ``queue`` on ``topic`` that wait due now: a member joined."""

        async def update(writer: Any) -> None:
            await writer.execute(
                "UPDATE deliveries SET next_at = ?, failures = 0 WHERE next_at > ? AND "
                "queue IS ? AND seq IN (SELECT seq FROM events WHERE topic = ?)",
                (now, now, queue, topic),
            )

        await self._write(update)

    async def remember(self, groups: Collection[tuple[str, str, float]]) -> None:
        """Record queue groups seen, ``(topic, queue, seen)``."""
        rows = list(groups)

        async def upsert(writer: Any) -> None:
            await writer.executemany(
                "INSERT INTO groups VALUES (?, ?, ?) ON CONFLICT (topic, queue) "
                "DO UPDATE SET seen = MAX(seen, excluded.seen)",
                rows,
            )

        if rows:
            await self._write(upsert)

    async def forget(self, before: float) -> None:
        """Drop the groups last seen before ``before``."""

        async def delete(writer: Any) -> None:
            await writer.execute("DELETE FROM groups WHERE seen < ?", (before,))

        await self._write(delete)

    # -- reading --------------------------------------------------------------------------------

    async def due(self, now: float, *, exclude: Collection[int], limit: int) -> list[Pending]:
        """Up to ``limit`` deliveries due at ``now``, soonest first, but those in ``exclude``."""
        rows = await self._reader.execute_fetchall(
            _DUE, (now, orjson.dumps(list(exclude)).decode(), limit)
        )
        return [
            Pending(id_, seq, topic, orjson.loads(headers), *rest)
            for id_, seq, topic, headers, *rest in rows
        ]

    async def next_due(self, *, exclude: Collection[int]) -> float | None:
        """When the next delivery but those in ``exclude`` is due; ``None`` if there is none."""
        [(at,)] = await self._reader.execute_fetchall(
            _NEXT_DUE, (orjson.dumps(list(exclude)).decode(),)
        )
        return None if at is None else float(at)

    async def pending(self) -> int:
        """How many deliveries are waiting."""
        [(count,)] = await self._reader.execute_fetchall("SELECT COUNT(*) FROM deliveries")
        return int(count)

    async def groups(self) -> list[tuple[str, str, float]]:
        rows = await self._reader.execute_fetchall("SELECT topic, queue, seen FROM groups")
        return [(topic, queue, seen) for topic, queue, seen in rows]
