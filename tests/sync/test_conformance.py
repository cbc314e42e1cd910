"""One suite for every sync backend: exclusion, waiting, tokens, renewal, expiry, fencing."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid

import pytest

from asgi_micro.errors import Conflict
from asgi_micro.sync import Lease, LeaseLost, LockTimeout, Sync
from asgi_micro.sync.base import CLAIM
from tests.helpers import until
from tests.sync.conftest import Harness


def unique(what: str = "lock") -> str:
    return f"{what}/{uuid.uuid4().hex[:12]}"


async def test_mutual_exclusion_under_contention(harness: Harness) -> None:
    name, counter, intervals = unique(), [0], []

    async def worker(times: int) -> None:
        async with harness.peer() as sync:
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


async def test_wait_times_out_with_lock_timeout(harness: Harness) -> None:
    name = unique()
    async with harness.sync.lock(name, ttl=5), harness.peer() as peer:
        started = time.monotonic()
        with pytest.raises(LockTimeout) as caught:
            async with peer.lock(name, wait=0.3):
                pytest.fail("acquired a held lock")
        assert 0.25 <= time.monotonic() - started < 2.0
        assert caught.value.code == 409
        with pytest.raises(LockTimeout):
            await peer.acquire(name, wait=0)


async def test_a_holder_that_asks_again_at_once_does_not_starve_a_waiter(harness: Harness) -> None:
    name, stop, rounds = unique(), asyncio.Event(), [0]

    async def hammer(sync: Sync) -> None:  # releases and asks again without a pause
        while not stop.is_set():
            async with sync.lock(name, ttl=5, wait=10):
                rounds[0] += 1
                await asyncio.sleep(0.002)

    async with harness.peer() as peer:
        hammering = asyncio.create_task(hammer(harness.sync))
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


async def test_the_longest_waiter_goes_next(harness: Harness) -> None:
    name, order = unique(), []

    async def waiter(sync: Sync, who: str) -> None:
        async with sync.lock(name, ttl=5, wait=10):
            order.append(who)
            await asyncio.sleep(0.01)

    async with harness.peer() as peer:
        holder = await harness.sync.acquire(name, ttl=5)
        first = asyncio.create_task(waiter(peer, "first"))
        await asyncio.sleep(0.3)  # the first has asked and claimed
        second = asyncio.create_task(waiter(harness.sync, "second"))
        await asyncio.sleep(0.3)
        await harness.sync.release(holder)
        await asyncio.wait_for(asyncio.gather(first, second), timeout=10)
    assert order == ["first", "second"]


async def test_the_claim_of_a_waiter_that_gave_up_lapses(harness: Harness) -> None:
    name = unique()
    async with harness.peer() as peer:
        holder = await harness.sync.acquire(name, ttl=5)
        with pytest.raises(LockTimeout):
            await peer.acquire(name, wait=0.1)  # it claimed to be next, then gave up
        await harness.sync.release(holder)
        started = time.monotonic()
        async with harness.sync.lock(name, ttl=5, wait=5):
            assert time.monotonic() - started < CLAIM + 1.0


async def test_tokens_grow_per_name_across_holders(harness: Harness) -> None:
    name, other, tokens = unique(), unique(), []
    async with harness.peer() as peer:
        for sync in (harness.sync, peer, harness.sync, peer):
            async with sync.lock(name, ttl=5, wait=5) as lease:
                tokens.append(lease.token)
    assert tokens == sorted(set(tokens))
    assert len(tokens) == 4
    async with harness.sync.lock(other, ttl=5) as lease:
        assert lease.token >= 1  # a name of its own counts on its own
        assert lease.fence == (other, lease.token)


async def test_renewal_keeps_a_lease_past_its_ttl(harness: Harness) -> None:
    name = unique()
    async with harness.sync.lock(name, ttl=0.4) as lease:
        await asyncio.sleep(1.2)
        assert lease.held
        assert not lease.lost.is_set()
        lease.check()
        async with harness.peer() as peer:
            with pytest.raises(LockTimeout):
                await peer.acquire(name, wait=0)


async def test_expiry_frees_a_lock_whose_holder_stopped_renewing(harness: Harness) -> None:
    name = unique()
    # a holder that took the lease through the backend step and never renews it: a dead process
    stopped = await harness.sync._acquire(name, "stopped-holder", 0.4)
    assert stopped is not None
    async with harness.peer() as peer:
        started = time.monotonic()
        async with peer.lock(name, ttl=5, wait=5) as lease:
            assert 0.3 <= time.monotonic() - started < 3.0
            assert lease.token > stopped


async def test_release_on_exit_and_on_exception(harness: Harness) -> None:
    name = unique()
    async with harness.sync.lock(name, ttl=30) as lease:
        pass
    assert lease.lost.is_set()
    with pytest.raises(LeaseLost):
        lease.check()
    with pytest.raises(ZeroDivisionError):
        async with harness.sync.lock(name, ttl=30):
            1 / 0  # noqa: B018
    async with harness.peer() as peer, peer.lock(name, wait=0) as again:
        assert again.token > lease.token


async def test_stop_releases_the_leases_it_holds(harness: Harness) -> None:
    name = unique()
    lease = await harness.sync.acquire(name, ttl=30)
    await harness.sync.stop()
    assert lease.lost.is_set()
    await harness.sync.start()
    async with harness.peer() as peer, peer.lock(name, wait=0) as again:
        assert again.token > lease.token


async def test_exactly_one_leader_at_a_time(harness: Harness) -> None:
    name, terms = unique("election"), []
    leading: list[int] = []

    async def candidate(index: int) -> None:
        async with harness.peer() as sync, sync.leader(name, ttl=2, wait=30) as term:
            leading.append(index)
            assert len(leading) == 1, f"leaders at once: {leading}"
            terms.append(term.token)
            await asyncio.sleep(0.05)
            term.check()
            leading.remove(index)

    await asyncio.wait_for(asyncio.gather(*(candidate(i) for i in range(3))), timeout=30)
    assert len(terms) == 3
    assert terms == sorted(set(terms))


async def test_lost_is_set_when_the_lease_is_taken_over(harness: Harness) -> None:
    name = unique()
    async with harness.sync.lock(name, ttl=0.6) as lease:
        await harness.expire(name)  # the backend let it go, as if its holder had been paused
        async with harness.peer() as peer, peer.lock(name, ttl=5, wait=2) as successor:
            assert successor.token > lease.token
            await asyncio.wait_for(lease.wait_lost(), timeout=2)
            with pytest.raises(LeaseLost):
                lease.check()


async def test_fenced_writes_refuse_a_stale_token(harness: Harness) -> None:
    name, key = unique(), unique("key")
    store = harness.store.database(f"test_{uuid.uuid4().hex[:12]}")
    async with harness.sync.lock(name, ttl=5) as first:
        await store.write(key, b"first", fence=first.fence)
        await store.write(key, b"first again", fence=first.fence)  # the same holder again
        await harness.expire(name)
        async with harness.peer() as peer, peer.lock(name, ttl=5, wait=2) as second:
            await store.write(key, b"second", fence=second.fence)
            with pytest.raises(Conflict, match="stale"):
                await store.write(key, b"stale", fence=first.fence)
            with pytest.raises(Conflict, match="stale"):
                await store.write_json(key, {"stale": True}, fence=(name, first.token))
    [record] = await store.read(key)
    assert record.value == b"second"
    assert record.version == 3


async def test_a_refused_fence_leaves_the_version_check_unspent(harness: Harness) -> None:
    name, key = unique(), unique("key")
    store = harness.store.database(f"test_{uuid.uuid4().hex[:12]}")
    async with harness.sync.lock(name, ttl=5) as lease:
        written = await store.write(key, b"1", fence=lease.fence)
        with pytest.raises(Conflict):  # the version check fails: the fence must not move
            await store.write(key, b"2", fence=(name, lease.token + 100), if_version=7)
        await store.write(key, b"2", fence=lease.fence, if_version=written.version)


async def test_a_paused_holder_learns_it_lost_by_its_own_clock(harness: Harness) -> None:
    name = unique()
    lease: Lease = await harness.sync.acquire(name, ttl=0.3)
    try:
        time.sleep(0.4)  # noqa: ASYNC251 - the loop stalls past the TTL: no renewal could run
        assert not lease.held
        with pytest.raises(LeaseLost):
            lease.check()
        await until(lease.lost.is_set, "lost set", timeout=1)
    finally:
        await harness.sync.release(lease)


async def test_bad_arguments(harness: Harness) -> None:
    for name in ("", "a\x00b"):
        with pytest.raises(ValueError):
            await harness.sync.acquire(name)
    with pytest.raises(ValueError):
        await harness.sync.acquire(unique(), ttl=0)
    with pytest.raises(ValueError):
        await harness.sync.acquire(unique(), wait=-1)
