"""An in-process store: for tests, and for state that may vanish with the process.

Keys of each namespace are kept sorted beside the records, so a prefix read is a binary search
and a walk, not a scan; expiry times sit in a heap that the sweeper pops.
"""

from __future__ import annotations

import asyncio
import bisect
import builtins
import heapq
import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .base import ABSENT, DEFAULT_DATABASE, DEFAULT_TABLE, MAX_VALUE_SIZE, Fence, Record, Store

if TYPE_CHECKING:
    from ..plugins import Parts

__all__ = ["MemoryStore"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Entry:
    value: bytes
    metadata: dict[str, str]
    expires_at: float | None
    version: int

    def live(self, now: float) -> bool:
        return self.expires_at is None or self.expires_at > now


@dataclass(slots=True)
class _Table:
    entries: dict[str, _Entry] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)  # sorted

    def put(self, key: str, entry: _Entry) -> None:
        if key not in self.entries:
            bisect.insort(self.keys, key)
        self.entries[key] = entry

    def remove(self, key: str) -> None:
        del self.entries[key]
        del self.keys[bisect.bisect_left(self.keys, key)]

    def matching(self, prefix: str, suffix: str, now: float) -> Iterator[tuple[str, _Entry]]:
        keys = self.keys
        for index in range(bisect.bisect_left(keys, prefix), len(keys)):
            key = keys[index]
            if not key.startswith(prefix):
                return
            entry = self.entries[key]
            if key.endswith(suffix) and entry.live(now):
                yield key, entry


@dataclass(slots=True)
class _State:
    """What the views of one store share."""

    sweep_interval: float
    tables: dict[tuple[str, str], _Table] = field(default_factory=dict)
    # (expires_at, database, table, key): a write with a TTL pushes one; stale ones are skipped
    expiries: list[tuple[float, str, str, str]] = field(default_factory=list)
    fences: dict[str, int] = field(default_factory=dict)  # lock name -> highest token written
    started: bool = False
    sweeper: asyncio.Task[None] | None = None


class MemoryStore(Store):
    """Keeps records in this object; views from ``table()``/``database()`` share them."""

    def __init__(
        self,
        *,
        database: str = DEFAULT_DATABASE,
        table: str = DEFAULT_TABLE,
        max_value_size: int = MAX_VALUE_SIZE,
        sweep_interval: float = 60.0,
    ) -> None:
        super().__init__(database=database, table=table, max_value_size=max_value_size)
        if sweep_interval <= 0:
            raise ValueError(f"sweep_interval must be positive, got {sweep_interval}")
        self.url = "memory://"
        self._state = _State(sweep_interval)

    @classmethod
    def from_url(cls, url: str, *, parts: Parts | None = None) -> MemoryStore:
        return cls()

    async def start(self) -> None:
        state = self._state
        if state.started:
            return
        state.started = True
        state.sweeper = asyncio.create_task(self._sweep_forever(), name="asgi_micro.store.sweep")

    async def stop(self) -> None:
        state = self._state
        if not state.started:
            return
        state.started = False
        if state.sweeper is not None:
            state.sweeper.cancel()
            await asyncio.gather(state.sweeper, return_exceptions=True)
            state.sweeper = None

    def _require_started(self) -> None:
        if not self._state.started:
            raise RuntimeError(f"{self!r} is not started")

    def _namespace(self) -> _Table:
        self._require_started()
        namespace = (self._database, self._table)
        table = self._state.tables.get(namespace)
        if table is None:
            table = self._state.tables[namespace] = _Table()
        return table

    async def _read_key(self, key: str, now: float) -> Record | None:
        entry = self._namespace().entries.get(key)
        if entry is None or not entry.live(now):
            return None
        return Record(key, entry.value, dict(entry.metadata), entry.expires_at, entry.version)

    async def _read_range(
        self, prefix: str, suffix: str, limit: int | None, offset: int, now: float
    ) -> builtins.list[Record]:
        return [
            Record(key, entry.value, dict(entry.metadata), entry.expires_at, entry.version)
            for key, entry in _page(self._namespace().matching(prefix, suffix, now), limit, offset)
        ]

    async def _list_keys(
        self, prefix: str, suffix: str, limit: int | None, offset: int, now: float
    ) -> builtins.list[str]:
        matches = self._namespace().matching(prefix, suffix, now)
        return [key for key, _ in _page(matches, limit, offset)]

    async def _write(
        self,
        key: str,
        value: bytes,
        metadata: dict[str, str],
        expires_at: float | None,
        if_version: int | None,
        now: float,
    ) -> int:
        table = self._namespace()
        current = table.entries.get(key)
        found = current.version if current is not None and current.live(now) else None
        if if_version is not None and (ABSENT if found is None else found) != if_version:
            raise self._conflict(key, if_version, found)
        version = 1 if found is None else found + 1
        table.put(key, _Entry(value, dict(metadata), expires_at, version))
        if expires_at is not None:
            heapq.heappush(self._state.expiries, (expires_at, self._database, self._table, key))
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
        self._require_started()
        fences = self._state.fences
        highest = fences.get(fence.name)
        if highest is not None and fence.token < highest:
            raise self._fenced_out(fence, highest)
        # _write does not suspend, so nothing runs between the check above and the write
        version = await self._write(key, value, metadata, expires_at, if_version, now)
        fences[fence.name] = fence.token
        return version

    async def _delete(self, key: str, if_version: int | None, now: float) -> bool:
        table = self._namespace()
        current = table.entries.get(key)
        found = current.version if current is not None and current.live(now) else None
        if if_version is not None and found != if_version:
            raise self._conflict(key, if_version, found)
        if current is not None:
            table.remove(key)
        return found is not None

    async def _sweep(self, now: float) -> int:
        self._require_started()
        state = self._state
        swept = 0
        while state.expiries and state.expiries[0][0] <= now:
            _, database, table_name, key = heapq.heappop(state.expiries)
            table = state.tables.get((database, table_name))
            entry = table.entries.get(key) if table is not None else None
            # the key may have been written again, with a later expiry or none
            if table is not None and entry is not None and not entry.live(now):
                table.remove(key)
                swept += 1
        return swept

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._state.sweep_interval)
            swept = await self.sweep()
            if swept:
                logger.debug("swept %d expired records from %r", swept, self)


def _page(
    matches: Iterator[tuple[str, _Entry]], limit: int | None, offset: int
) -> Iterator[tuple[str, _Entry]]:
    return itertools.islice(matches, offset, None if limit is None else offset + limit)
