"""Locks on a real etcd: the conformance suite, and what is etcd's own: tokens that keep growing
across an etcd restart, the claim and lock keys apart, a server that is down, and the URL.

Each test keeps to a key prefix of its own on the session's etcd and deletes it afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from asgi_micro_etcd._client import connect
from asgi_micro_etcd.sync import DEFAULT_PREFIX, EtcdSync

from asgi_micro.errors import ServiceUnavailable
from asgi_micro.store import Store
from asgi_micro.store.memory import MemoryStore
from asgi_micro.sync import LeaseLost, Sync
from asgi_micro.sync import from_url as sync_from_url
from asgi_micro.testing.sync import SyncConformance
from tests.etcd import etcd_server
from tests.helpers import eventually, free_port


def etcd_scheme(url: str) -> str:
    """``http://host:port`` (how ``tests.etcd`` names a server) as an ``etcd://`` URL."""
    return "etcd://" + url.removeprefix("http://")


@contextlib.asynccontextmanager
async def cleaned(url: str, prefix: str) -> AsyncIterator[None]:
    """Delete every key under ``prefix`` of the etcd at ``url`` afterwards."""
    try:
        yield
    finally:
        client = await connect(etcd_scheme(url))
        try:
            await client.delete_prefix(prefix.encode())
        finally:
            await client.close()


class TestEtcd(SyncConformance):
    """etcd grants leases no shorter than 2 s, and checks for expired ones every 0.5 s."""

    expiry_slack = 2.0

    @pytest.fixture(autouse=True)
    def _server(self, etcd_url: str) -> None:
        self.prefix = f"/test-{uuid.uuid4().hex[:12]}/sync/"
        self.url = f"{etcd_scheme(etcd_url)}?prefix={self.prefix}"
        self.etcd_url = etcd_url

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[tuple[Sync, Store]]:
        self.locks = EtcdSync.from_url(self.url)
        async with cleaned(self.etcd_url, self.prefix), self.locks, MemoryStore() as store:
            yield self.locks, store

    @contextlib.asynccontextmanager
    async def peer(self) -> AsyncIterator[Sync]:
        async with EtcdSync.from_url(self.url) as sync:
            yield sync

    async def expire(self, name: str) -> None:
        await self.locks._call("delete", self.locks.lock_key(name))


@pytest.fixture
async def prefix(etcd_url: str) -> AsyncIterator[str]:
    chosen = f"/test-{uuid.uuid4().hex[:12]}/sync/"
    async with cleaned(etcd_url, chosen):
        yield chosen


async def test_the_url_names_the_backend_and_its_prefix(etcd_url: str, prefix: str) -> None:
    sync = sync_from_url(f"{etcd_scheme(etcd_url)}?prefix={prefix}")
    assert isinstance(sync, EtcdSync)
    assert sync.prefix == prefix
    assert sync.lock_key("a/b") == f"{prefix}locks/a/b".encode()
    assert sync.claim_key("a/b") == f"{prefix}next/a/b".encode()
    assert EtcdSync.from_url("etcd://127.0.0.1:2379").prefix == DEFAULT_PREFIX
    with pytest.raises(ValueError, match="unknown options"):
        EtcdSync.from_url("etcd://127.0.0.1:2379?prefx=/typo/")
    with pytest.raises(ValueError, match="etcd://"):
        EtcdSync.from_url("http://127.0.0.1:2379")


async def test_a_lock_name_that_looks_like_another_locks_claim(etcd_url: str, prefix: str) -> None:
    """Lock and claim keys live in folders apart, so no name (which may hold ``/``) reaches
    another lock's claim."""
    url = f"{etcd_scheme(etcd_url)}?prefix={prefix}"
    async with EtcdSync.from_url(url) as sync, EtcdSync.from_url(url) as peer:
        held = await sync.acquire("x", ttl=5)
        assert await peer._claim("x", "a-waiter", time.time(), 5.0)
        async with peer.lock("next/x", ttl=5, wait=0), peer.lock("x/next", ttl=5, wait=0):
            pass
        await sync.release(held)


@pytest.mark.slow
async def test_tokens_keep_growing_across_an_etcd_restart(tmp_path: Path) -> None:
    """A token is the lock key's create revision, which etcd keeps in its data directory."""
    port, peer_port, tokens = free_port(), free_port(), []
    for _ in range(2):
        with etcd_server(port=port, peer_port=peer_port, data_dir=str(tmp_path)) as url:
            async with EtcdSync.from_url(etcd_scheme(url)) as sync:
                for _ in range(3):
                    async with sync.lock("restarted", ttl=5, wait=5) as lease:
                        tokens.append(lease.token)
    assert len(tokens) == 6
    assert tokens == sorted(set(tokens)), tokens


async def test_an_etcd_that_is_down_fails_the_start() -> None:
    sync = EtcdSync.from_url(f"etcd://user:secret@127.0.0.1:{free_port()}?timeout=1")
    began = time.monotonic()
    with pytest.raises(ServiceUnavailable, match=r"etcd at etcd://user:\*\*\*@") as info:
        await sync.start()
    assert "secret" not in str(info.value)
    assert time.monotonic() - began < 5


@pytest.mark.slow
async def test_a_holder_loses_its_lease_while_etcd_is_away_and_locks_again_after() -> None:
    port, peer_port = free_port(), free_port()
    sync = EtcdSync.from_url(f"etcd://127.0.0.1:{port}?timeout=1")
    try:
        with etcd_server(port=port, peer_port=peer_port):
            await sync.start()
            lease = await sync.acquire("away", ttl=1)
        # etcd is gone: renewals fail, and the holder's own clock ends the lease within its TTL
        await asyncio.wait_for(lease.wait_lost(), timeout=5)
        with pytest.raises(LeaseLost):
            lease.check()
        with pytest.raises(ServiceUnavailable, match=r"etcd at etcd://127\.0\.0\.1"):
            await sync.acquire("away", wait=0)

        async def locks_again() -> bool:
            try:
                async with sync.lock("away", ttl=1, wait=0) as again:
                    return again.held
            except ServiceUnavailable:  # gRPC may wait out its reconnect backoff first
                return False

        with etcd_server(port=port, peer_port=peer_port):  # another etcd on the same address
            await eventually(locks_again, timeout=10, message="no lock once etcd was back")
    finally:
        await sync.stop()
