"""The sync interface: distributed locks and leader election, with fencing tokens.

``async with sync.lock(name, ttl=10, wait=5) as lease:`` holds the lock ``name`` for the body.
A lease lives ``ttl`` seconds on the backend and is renewed every ``ttl / 3`` in the background;
``lease.lost`` is set when it ends: released, refused a renewal, or not renewed in time (the
process was paused, the backend unreachable). ``lease.check()`` raises ``LeaseLost`` once the
lease can no longer be trusted, judged by this process's monotonic clock, so a holder that was
paused past its TTL learns it on its next check even before the renewer has run.

``lease.token`` is a fencing token: every acquisition of a name gets a larger one than the one
before, across holders (and across restarts of a durable backend). Pass ``fence=lease.fence``
to ``Store.write`` and the store refuses a write whose token is below one already used, which
stops a paused holder whose successor has written since. ``sync.leader(name)`` is a lock whose
holder is the leader; its lease is the leader's term.

Waiting is fair: a waiter that finds the lock held claims to be next, and the claim goes to
whoever has waited longest. While a live claim stands, only its claimant may take the freed
lock, so a holder that releases and asks again at once cannot starve the others; the claimant
polls every few milliseconds. A claim is a write, so a waiter claims from its second retry on,
and renews its claim every ``CLAIM / 3``; a claim lapses ``CLAIM`` seconds after it was last
renewed, so a waiter that died or gave up holds a free lock back for at most that long.

A backend implements ``_acquire``, ``_claim``, ``_renew`` and ``_release``, each one atomic
step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from abc import abstractmethod
from collections.abc import AsyncIterator
from typing import Final

from ..errors import Conflict
from ..plugins import Pluggable
from ..store.base import Fence

__all__ = ["SYNC_ID", "Fence", "Lease", "LeaseLost", "LockTimeout", "Sync"]

logger = logging.getLogger(__name__)

SYNC_ID: Final = "asgi_micro.sync"
"""The ``id`` of errors the sync raises."""
MAX_NAME_SIZE: Final = 512
LEADER_PREFIX: Final = "leader:"
_POLL_FIRST, _POLL_MAX = 0.005, 0.1
_POLL_CLAIMANT = 0.01
CLAIM: Final = 0.5
"""Seconds a waiter's claim to be next outlives its last attempt."""


class LockTimeout(Conflict):
    """The lock was not acquired within ``wait`` seconds (409: someone else holds it)."""


class LeaseLost(Conflict):
    """The lease ended (released, expired or taken over): its holder must stop acting."""


class Lease:
    """One holder's hold on a lock: its ``name``, fencing ``token`` and ``ttl`` in seconds.

    ``lost`` is set when the lease ends, whether lost or released; ``fence`` is what a store
    write takes to be refused once a later holder has written.
    """

    __slots__ = ("_renewal", "_timer", "_valid_until", "lost", "name", "owner", "token", "ttl")

    def __init__(self, name: str, *, owner: str, token: int, ttl: float, valid_until: float):
        self.name = name
        self.owner = owner
        self.token = token
        self.ttl = ttl
        self.lost = asyncio.Event()
        self._valid_until = valid_until  # time.monotonic() past which the backend may have freed it
        self._timer: asyncio.TimerHandle | None = None  # when the next renewal is due
        self._renewal: asyncio.Task[None] | None = None  # a renewal under way

    @property
    def fence(self) -> Fence:
        return Fence(self.name, self.token)

    @property
    def held(self) -> bool:
        """Whether the lease is still good, by this process's clock."""
        if not self.lost.is_set() and time.monotonic() >= self._valid_until:
            self.lost.set()
        return not self.lost.is_set()

    def check(self) -> None:
        """Raise ``LeaseLost`` unless the lease is still held; call it before acting."""
        if not self.held:
            raise LeaseLost(f"the lease on {self.name!r} (token {self.token}) ended", id=SYNC_ID)

    async def wait_lost(self) -> None:
        """Return once the lease has ended."""
        await self.lost.wait()

    def __repr__(self) -> str:
        state = "held" if self.held else "lost"
        return f"Lease({self.name!r}, token={self.token}, ttl={self.ttl}, {state})"


class Sync(Pluggable):
    """Locks with fencing tokens and leader election over one backend.

    Lifecycle is explicit and idempotent (``start``/``stop`` or ``async with``); ``stop``
    releases every lease this object still holds.
    """

    def __init__(self) -> None:
        self._started = False
        self._leases: set[Lease] = set()

    async def start(self) -> None:
        if self._started:
            return
        await self._open()
        self._started = True

    async def stop(self) -> None:
        if not self._started:
            return
        for lease in list(self._leases):
            await self.release(lease)
        self._started = False
        await self._close()

    @contextlib.asynccontextmanager
    async def lock(
        self, name: str, *, ttl: float = 10.0, wait: float | None = None
    ) -> AsyncIterator[Lease]:
        """Hold the lock ``name`` for the body; waits at most ``wait`` seconds (``None``: until
        acquired; 0: one try), else ``LockTimeout``. Released on exit, exception or not."""
        lease = await self.acquire(name, ttl=ttl, wait=wait)
        try:
            yield lease
        finally:
            await self.release(lease)

    @contextlib.asynccontextmanager
    async def leader(
        self, name: str, *, ttl: float = 10.0, wait: float | None = None
    ) -> AsyncIterator[Lease]:
        """Be the leader of ``name`` for the body: the lock ``leader:<name>``; the lease is the
        term, whose ``lost`` is set when leadership ends."""
        async with self.lock(LEADER_PREFIX + name, ttl=ttl, wait=wait) as term:
            yield term

    async def acquire(self, name: str, *, ttl: float = 10.0, wait: float | None = None) -> Lease:
        """Take the lock ``name``, as ``lock`` does, and keep it until ``release``."""
        _check_name(name)
        if not ttl > 0:
            raise ValueError(f"ttl must be positive, got {ttl!r}")
        if wait is not None and wait < 0:
            raise ValueError(f"wait must be >= 0 or None, got {wait!r}")
        if not self._started:
            raise RuntimeError(f"{self!r} is not started")
        owner = uuid.uuid4().hex
        deadline = None if wait is None else time.monotonic() + wait
        since = time.time()  # wall clock: waiters in other processes compare it
        pause = _POLL_FIRST
        claimed_at: float | None = None  # when this waiter last made sure it is next
        attempts = 0
        while True:
            sent = time.monotonic()
            token = await self._acquire(name, owner, ttl)
            if token is not None:
                break
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise LockTimeout(f"lock {name!r} not acquired within {wait}s", id=SYNC_ID)
            attempts += 1
            # A claim is a write: not for a wait that ends at the first retry, and while this
            # waiter holds one, renewed only as it nears its lapse (a longer waiter may take it
            # meanwhile; the acquire then fails and the claim is looked at again).
            if claimed_at is None or now - claimed_at > CLAIM / 3:
                claimed_at = None
                if attempts > 1 and await self._claim(name, owner, since, CLAIM):
                    claimed_at = now
            next_in_line = claimed_at is not None
            pause = min(pause * 2, _POLL_MAX, ttl / 4)
            delay = (_POLL_CLAIMANT if next_in_line else pause) * random.uniform(0.5, 1.0)
            if deadline is not None:  # jitter above: waiters do not poll in step
                delay = min(delay, deadline - now)
            await asyncio.sleep(delay)
        lease = Lease(name, owner=owner, token=token, ttl=ttl, valid_until=sent + ttl)
        self._leases.add(lease)
        self._schedule(lease)
        return lease

    async def release(self, lease: Lease) -> None:
        """Give the lease up (if it is still this holder's) and set ``lost``."""
        if lease not in self._leases:
            return
        self._leases.discard(lease)
        if lease._timer is not None:
            lease._timer.cancel()
            lease._timer = None
        if lease._renewal is not None and lease._renewal is not asyncio.current_task():
            await asyncio.gather(lease._renewal, return_exceptions=True)  # it will not go on
        lease.lost.set()
        try:  # the backend frees it only while it is still this holder's, with this token
            await self._release(lease.name, lease.owner, lease.token)
        except Exception as exc:  # the lease expires by its TTL instead
            logger.warning("releasing %r failed: %s", lease, exc)

    # A timer, not a task, waits for each renewal: a lease held for less than ttl / 3, as most
    # are, costs no task at all.

    def _schedule(self, lease: Lease) -> None:
        lease._timer = asyncio.get_running_loop().call_later(
            lease.ttl / 3, self._renewal_due, lease
        )

    def _renewal_due(self, lease: Lease) -> None:
        lease._timer = None
        lease._renewal = asyncio.create_task(
            self._renew_lease(lease), name=f"asgi_micro.sync.renew:{lease.name}"
        )

    async def _renew_lease(self, lease: Lease) -> None:
        """Renew once and schedule the next, or set ``lost`` when the lease cannot be kept."""
        try:
            if not lease.held:
                logger.warning("%r was not renewed in time", lease)
                return
            sent = time.monotonic()
            try:
                async with asyncio.timeout(lease._valid_until - sent):
                    renewed = await self._renew(lease.name, lease.owner, lease.token, lease.ttl)
            except Exception as exc:  # the backend is away: retry while the lease is good
                logger.warning("renewing %r failed: %s", lease, exc)
            else:
                if not renewed:
                    logger.warning("%r was taken over", lease)
                    lease.lost.set()
                    return
                lease._valid_until = sent + lease.ttl
            if lease in self._leases:
                self._schedule(lease)
        finally:
            lease._renewal = None

    # What a backend implements: each one atomic step on the backend.

    async def _open(self) -> None:
        """Connect, make tables."""

    async def _close(self) -> None:
        """Close what ``_open`` opened."""

    @abstractmethod
    async def _acquire(self, name: str, owner: str, ttl: float) -> int | None:
        """If ``name`` is free or expired and no other waiter's live claim stands, make
        ``owner`` its holder for ``ttl`` seconds, drop the claim and return the next token of
        ``name``; ``None`` if it is held or claimed."""

    @abstractmethod
    async def _claim(self, name: str, owner: str, since: float, claim: float) -> bool:
        """Claim to take ``name`` next, for ``claim`` seconds, unless a live claim of a waiter
        whose ``since`` is earlier stands; whether ``owner`` is now next in line."""

    @abstractmethod
    async def _renew(self, name: str, owner: str, token: int, ttl: float) -> bool:
        """Extend the lease to ``ttl`` seconds from now if ``owner`` still holds it with
        ``token`` and it has not expired."""

    @abstractmethod
    async def _release(self, name: str, owner: str, token: int) -> None:
        """Free ``name`` if ``owner`` still holds it with ``token``."""


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"a lock name must be a non-empty str, got {name!r}")
    if "\x00" in name or len(name.encode(errors="replace")) > MAX_NAME_SIZE:
        raise ValueError(f"a lock name must be under {MAX_NAME_SIZE} bytes, with no NUL")
