"""The sync conformance suite: exclusion, fair waiting, tokens, renewal, expiry and fencing,
the same from every lock backend.

A backend's tests subclass ``SyncConformance`` and say how to open it::

    from asgi_micro.testing.sync import SyncConformance


    class TestMySync(SyncConformance):
        @contextlib.asynccontextmanager
        async def open(self) -> AsyncIterator[tuple[Sync, Store]]:
            async with MySync.from_url(URL) as sync, MemoryStore() as store:
                yield sync, store       # and remove the keys it made afterwards

        @contextlib.asynccontextmanager
        async def peer(self) -> AsyncIterator[Sync]:
            async with MySync.from_url(URL) as sync:
                yield sync

        async def expire(self, name: str) -> None:
            ...  # make the backend forget the lease on name now

``open`` yields a started sync, which the tests get as their ``sync`` fixture, and the started
store its fenced writes go to (any store that takes a ``fence``), kept as ``self.store``.
``peer`` is another sync on the same backend, as another process would have (where the
backend has no other process, as with ``memory://``, it may be the opened one itself).
``expire(name)`` makes the backend drop the lease on ``name`` at once, as a TTL that ran out
while its holder was paused would.
``expiry_slack`` is how much longer than its TTL the backend may keep a lease whose holder
stopped renewing (etcd rounds a TTL up to its minimum lease). Lock names are unique per test, so
the suite runs beside other users of a shared server.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from ..errors import Conflict
from ..store import Store
from ..sync import Lease, LeaseLost, LockTimeout, Sync
from ..sync.base import CLAIM
from . import until

__all__ = ["SyncConformance", "unique"]


def unique(what: str = "lock") -> str:
    return f"{what}/{uuid.uuid4().hex[:12]}"


@pytest.mark.asyncio
class SyncConformance:
    """Subclass it as ``Test...`` and implement ``open``, ``peer`` and ``expire``."""

    store: Store
    expiry_slack: float = 0.0
    """Seconds past its TTL that the backend may keep a lease nobody renews."""

    def open(self) -> contextlib.AbstractAsyncContextManager[tuple[Sync, Store]]:
        """A started sync and the started store its fenced writes go to; afterwards, stop
        them and remove what they made."""
        raise NotImplementedError(f"{type(self).__name__} must implement open()")

    def peer(self) -> contextlib.AbstractAsyncContextManager[Sync]:
        """Another started sync on the same backend as the one ``open`` yields."""
        raise NotImplementedError(f"{type(self).__name__} must implement peer()")

    async def expire(self, name: str) -> None:
        """Make the backend drop the lease on ``name`` now."""
        raise NotImplementedError(f"{type(self).__name__} must implement expire()")

    @pytest_asyncio.fixture
    async def sync(self) -> AsyncIterator[Sync]:
        async with self.open() as (opened, self.store):
            yield opened

    async def test_mutual_exclusion_under_contention(self, sync: Sync) -> None:
        name, counter, intervals = unique(), [0], []

        async def worker(times: int) -> None:
            async with self.peer() as sync:
                for _ in range(times):
                    async with sync.lock(name, ttl=5, wait=30) as lease:
                        start = time.monotonic()
                        seen = counter[0]
                        await asyncio.sleep(0.002)  # others run, and must not get in
                        counter[0] = seen + 1
                        intervals.append((start, time.monotonic(), lease.token))

        await asyncio.wait_for(asyncio.gather(*(worker(5) for _ in range(6))), timeout=60)
        assert counter[0] == 30
        intervals.sort()
        for (_, end, token), (start, _, next_token) in itertools.pairwise(intervals):
            assert end <= start, "two holders at once"
            assert next_token > token, "a later holder got a smaller token"

    async def test_wait_times_out_with_lock_timeout(self, sync: Sync) -> None:
        name = unique()
        async with sync.lock(name, ttl=5), self.peer() as peer:
            started = time.monotonic()
            with pytest.raises(LockTimeout) as caught:
                async with peer.lock(name, wait=0.3):
                    pytest.fail("acquired a held lock")
            assert 0.25 <= time.monotonic() - started < 2.0
            assert caught.value.code == 409
            with pytest.raises(LockTimeout):
                await peer.acquire(name, wait=0)

    async def test_a_holder_that_asks_again_at_once_does_not_starve_a_waiter(
        self, sync: Sync
    ) -> None:
        name, stop, rounds = unique(), asyncio.Event(), [0]

        async def hammer(sync: Sync) -> None:  # releases and asks again without a pause
            while not stop.is_set():
                async with sync.lock(name, ttl=5, wait=10):
                    rounds[0] += 1
                    await asyncio.sleep(0.002)

        async with self.peer() as peer:
            hammering = asyncio.create_task(hammer(sync))
            try:
                await until(lambda: rounds[0] >= 3, "the hammer to take the lock", 10)
                started = time.monotonic()
                async with peer.lock(name, ttl=5, wait=5):
                    waited = time.monotonic() - started
                    assert not hammering.done()
            finally:
                stop.set()
                await asyncio.wait_for(hammering, timeout=10)
        assert waited < 2.0, f"the waiter waited {waited:.2f}s"

    async def test_the_longest_waiter_goes_next(self, sync: Sync) -> None:
        name, order = unique(), []

        async def waiter(sync: Sync, who: str) -> None:
            async with sync.lock(name, ttl=5, wait=10):
                order.append(who)
                await asyncio.sleep(0.01)

        async with self.peer() as peer:
            holder = await sync.acquire(name, ttl=5)
            first = asyncio.create_task(waiter(peer, "first"))
            await asyncio.sleep(0.3)  # the first has asked and claimed
            second = asyncio.create_task(waiter(sync, "second"))
            await asyncio.sleep(0.3)
            await sync.release(holder)
            await asyncio.wait_for(asyncio.gather(first, second), timeout=10)
        assert order == ["first", "second"]

    async def test_the_claim_of_a_waiter_that_gave_up_lapses(self, sync: Sync) -> None:
        name = unique()
        async with self.peer() as peer:
            holder = await sync.acquire(name, ttl=5)
            with pytest.raises(LockTimeout):
                await peer.acquire(name, wait=0.1)  # it claimed to be next, then gave up
            await sync.release(holder)
            started = time.monotonic()
            async with sync.lock(name, ttl=5, wait=5):
                assert time.monotonic() - started < CLAIM + 1.0

    async def test_tokens_grow_per_name_across_holders(self, sync: Sync) -> None:
        name, other, tokens = unique(), unique(), []
        async with self.peer() as peer:
            for each in (sync, peer, sync, peer):
                async with each.lock(name, ttl=5, wait=5) as lease:
                    tokens.append(lease.token)
        assert tokens == sorted(set(tokens))
        assert len(tokens) == 4
        async with sync.lock(other, ttl=5) as lease:
            assert lease.token >= 1  # a name of its own counts on its own
            assert lease.fence == (other, lease.token)

    async def test_renewal_keeps_a_lease_past_its_ttl(self, sync: Sync) -> None:
        name = unique()
        async with sync.lock(name, ttl=0.4) as lease:
            await asyncio.sleep(1.2)
            assert lease.held
            assert not lease.lost.is_set()
            lease.check()
            async with self.peer() as peer:
                with pytest.raises(LockTimeout):
                    await peer.acquire(name, wait=0)

    async def test_expiry_frees_a_lock_whose_holder_stopped_renewing(self, sync: Sync) -> None:
        name = unique()
        # a holder that took the lease through the backend step and never renews it: a dead process
        stopped = await sync._acquire(name, "stopped-holder", 0.4)
        assert stopped is not None
        async with self.peer() as peer:
            started = time.monotonic()
            async with peer.lock(name, ttl=5, wait=5) as lease:
                assert 0.3 <= time.monotonic() - started < 3.0 + self.expiry_slack
                assert lease.token > stopped

    async def test_release_on_exit_and_on_exception(self, sync: Sync) -> None:
        name = unique()
        async with sync.lock(name, ttl=30) as lease:
            pass
        assert lease.lost.is_set()
        with pytest.raises(LeaseLost):
            lease.check()
        with pytest.raises(ZeroDivisionError):
            async with sync.lock(name, ttl=30):
                1 / 0  # noqa: B018
        async with self.peer() as peer, peer.lock(name, wait=0) as again:
            assert again.token > lease.token

    async def test_stop_releases_the_leases_it_holds(self, sync: Sync) -> None:
        name = unique()
        lease = await sync.acquire(name, ttl=30)
        await sync.stop()
        assert lease.lost.is_set()
        await sync.start()
        async with self.peer() as peer, peer.lock(name, wait=0) as again:
            assert again.token > lease.token

    async def test_exactly_one_leader_at_a_time(self, sync: Sync) -> None:
        name, terms = unique("election"), []
        leading: list[int] = []

        async def candidate(index: int) -> None:
            async with self.peer() as sync, sync.leader(name, ttl=2, wait=30) as term:
                leading.append(index)
                assert len(leading) == 1, f"leaders at once: {leading}"
                terms.append(term.token)
                await asyncio.sleep(0.05)
                term.check()
                leading.remove(index)

        await asyncio.wait_for(asyncio.gather(*(candidate(i) for i in range(3))), timeout=30)
        assert len(terms) == 3
        assert terms == sorted(set(terms))

    async def test_lost_is_set_when_the_lease_is_taken_over(self, sync: Sync) -> None:
        name = unique()
        async with sync.lock(name, ttl=0.6) as lease:
            await self.expire(name)  # the backend let it go, as if its holder had been paused
            async with self.peer() as peer, peer.lock(name, ttl=5, wait=2) as successor:
                assert successor.token > lease.token
                await asyncio.wait_for(lease.wait_lost(), timeout=2)
                with pytest.raises(LeaseLost):
                    lease.check()

    async def test_fenced_writes_refuse_a_stale_token(self, sync: Sync) -> None:
        name, key = unique(), unique("key")
        store = self.store.database(f"test_{uuid.uuid4().hex[:12]}")
        async with sync.lock(name, ttl=5) as first:
            await store.write(key, b"first", fence=first.fence)
            await store.write(key, b"first again", fence=first.fence)  # the same holder again
            await self.expire(name)
            async with self.peer() as peer, peer.lock(name, ttl=5, wait=2) as second:
                await store.write(key, b"second", fence=second.fence)
                with pytest.raises(Conflict, match="stale"):
                    await store.write(key, b"stale", fence=first.fence)
                with pytest.raises(Conflict, match="stale"):
                    await store.write_json(key, {"stale": True}, fence=(name, first.token))
        [record] = await store.read(key)
        assert record.value == b"second"
        assert record.version == 3

    async def test_a_refused_fence_leaves_the_version_check_unspent(self, sync: Sync) -> None:
        name, key = unique(), unique("key")
        store = self.store.database(f"test_{uuid.uuid4().hex[:12]}")
        async with sync.lock(name, ttl=5) as lease:
            written = await store.write(key, b"1", fence=lease.fence)
            with pytest.raises(Conflict):  # the version check fails: the fence must not move
                await store.write(key, b"2", fence=(name, lease.token + 100), if_version=7)
            await store.write(key, b"2", fence=lease.fence, if_version=written.version)

    async def test_a_paused_holder_learns_it_lost_by_its_own_clock(self, sync: Sync) -> None:
        name = unique()
        lease: Lease = await sync.acquire(name, ttl=0.3)
        try:
            time.sleep(0.4)  # noqa: ASYNC251 - the loop stalls past the TTL: no renewal could run
            assert not lease.held
            with pytest.raises(LeaseLost):
                lease.check()
            await until(lease.lost.is_set, "lost set", timeout=1)
        finally:
            await sync.release(lease)

    async def test_bad_arguments(self, sync: Sync) -> None:
        for name in ("", "a\x00b"):
            with pytest.raises(ValueError, match="a lock name must be"):
                await sync.acquire(name)
        with pytest.raises(ValueError, match="ttl must be positive"):
            await sync.acquire(unique(), ttl=0)
        with pytest.raises(ValueError, match="wait must be"):
            await sync.acquire(unique(), wait=-1)
