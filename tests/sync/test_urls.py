"""Sync backends chosen by URL, and what ``store://`` shares with the service's store."""

from __future__ import annotations

from pathlib import Path

import pytest

from asgi_micro.plugins import Parts
from asgi_micro.store.memory import MemoryStore
from asgi_micro.store.sql import SQLStore
from asgi_micro.sync import DEFAULT_URL, from_url
from asgi_micro.sync.memory import MemorySync
from asgi_micro.sync.store import StoreSync


def test_the_default_is_in_memory() -> None:
    assert DEFAULT_URL == "memory://"
    assert isinstance(from_url(DEFAULT_URL), MemorySync)


async def test_a_sqlite_url_makes_and_closes_a_store_of_its_own(tmp_path: Path) -> None:
    sync = from_url(f"sqlite:///{tmp_path / 'locks.db'}")
    assert isinstance(sync, StoreSync)
    async with sync, sync.lock("a") as lease:
        assert lease.token == 1
    assert not sync.store._shared.started


async def test_store_url_locks_in_the_services_store(tmp_path: Path) -> None:
    store = SQLStore.from_url(f"sqlite:///{tmp_path / 'service.db'}")
    sync = from_url("store://", parts=Parts(service="orders", store=store))
    assert isinstance(sync, StoreSync)
    assert sync.store is store
    assert sync.url == "store://"
    async with store:
        async with sync, sync.lock("orders/42") as lease:
            await store.write("orders/42", b"paid", fence=lease.fence)
        assert store._shared.started, "the service's store is the service's to stop"
        [record] = await store.read("orders/42")
        assert record.value == b"paid"


def test_store_url_needs_a_sql_store() -> None:
    with pytest.raises(ValueError, match="store:// locks need"):
        from_url("store://", parts=Parts(store=MemoryStore()))
    with pytest.raises(ValueError, match="store:// locks need"):
        from_url("store://")


async def test_a_sync_that_is_not_started_refuses_to_lock() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        await MemorySync().acquire("a")
