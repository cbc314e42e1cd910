"""``etcd://``: locks on etcd, each backend step one etcd transaction.

    etcd://127.0.0.1:2379?prefix=/micro/sync/

A lease is the key ``<prefix>locks/<name>`` holding its owner, attached to an etcd lease of
``ttl`` seconds, so etcd frees it by its own clock when its holder stops renewing. Acquiring is
one transaction, *if the key does not exist and the claim is as it was read, put it and drop
the claim*, and the fencing token is the key's create revision: etcd's revision grows with
every write to the cluster and is kept across restarts, so each acquisition of a name gets a
larger token than the one before, with no counter to keep. Renewing is a keep-alive of the
etcd lease while the key still holds this owner at this revision; releasing revokes the etcd
lease, which deletes the key only if it is still attached to it, that is still ours.

The waiter next in line is the key ``<prefix>next/<name>``: JSON of its ``owner``, ``since``
and ``until`` (when the claim lapses, by the claimant's wall clock, as ``since`` is). A claim
replaces it only if it is absent, the claimant's own, lapsed, or of a later ``since``; the
transaction compares the key's revision with the one read, so two claimants cannot both win.
Claims hang on one etcd lease per ``EtcdSync`` so that a claimant that died leaves no key
behind for long; locks and claims live under separate folders, so no lock name (which may hold
``/``) can reach another lock's claim.

etcd grants leases in whole seconds, and no shorter than its minimum (2 s with the default
heartbeat): a ``ttl`` of 0.5 s holds for 2 s on etcd if its holder dies. The holder itself
still trusts its lease for ``ttl`` seconds only (``Lease.check``), so the longer hold on etcd
costs waiters time, never safety.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING, Any, Final, Self

import aetcd
import orjson

from asgi_micro.errors import ServiceUnavailable
from asgi_micro.sync import SYNC_ID, Sync

from ._client import EtcdURL, connect, parse_url, raise_if_cancelled

if TYPE_CHECKING:
    from asgi_micro.plugins import Parts

__all__ = ["DEFAULT_PREFIX", "EtcdSync"]

logger = logging.getLogger(__name__)

DEFAULT_PREFIX: Final = "/micro/sync/"
CLAIMS_TTL: Final = 10
"""Seconds the etcd lease of this object's claims lives past its last refresh."""
_LOST_CONNECTION: Final = (aetcd.ConnectionFailedError, aetcd.ConnectionTimeoutError)
_MAX_POLLING: Final = 4096
ops: Final = aetcd.Transactions()
"""Builders of transaction compares and operations (no connection)."""


class EtcdSync(Sync):
    """Leases on etcd. ``client`` is the caller's and used as it is; without one, ``start``
    connects to ``url`` (and connects again, to the next host that answers, after a call
    failed for want of a connection). ``prefix`` starts every key."""

    def __init__(
        self,
        client: aetcd.Client | None = None,
        *,
        url: str | EtcdURL = "etcd://",
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        super().__init__()
        if not prefix:
            raise ValueError("an etcd sync needs a key prefix, e.g. '/micro/sync/'")
        self.etcd_url = parse_url(url) if isinstance(url, str) else url
        self.url = self.etcd_url.redacted
        self.prefix = prefix
        self._given = client
        self._etcd = client
        self._connecting = asyncio.Lock()
        self._lease_ids: dict[tuple[str, str, int], int] = {}  # (name, owner, token) -> lease
        self._polling: set[tuple[str, str]] = set()  # (name, owner) of waiters that found it held
        self._claims_lease: int | None = None
        self._claims_lease_due = 0.0  # time.monotonic() when it wants a refresh

    @classmethod
    def from_url(cls, url: str, *, parts: Parts | None = None) -> Self:
        parsed = parse_url(url)
        if parsed.options:
            raise ValueError(f"unknown options {sorted(parsed.options)} in {parsed.redacted!r}")
        return cls(url=parsed, prefix=parsed.prefix or DEFAULT_PREFIX)

    def lock_key(self, name: str) -> bytes:
        """The key of the lease on ``name``."""
        return f"{self.prefix}locks/{name}".encode()

    def claim_key(self, name: str) -> bytes:
        """The key of the claim of the waiter next in line for ``name``."""
        return f"{self.prefix}next/{name}".encode()

    async def _open(self) -> None:
        await self._client()

    async def _client(self) -> aetcd.Client:
        async with self._connecting:
            if self._etcd is None:
                self._etcd = await connect(self.etcd_url)
            return self._etcd

    async def _close(self) -> None:
        if self._claims_lease is not None:
            lease, self._claims_lease = self._claims_lease, None
            try:
                await self._call("revoke_lease", lease)
            except ServiceUnavailable as exc:  # the claims expire by their lease instead
                logger.warning("revoking the claims lease of %r failed: %s", self, exc)
        if self._etcd is not None and self._etcd is not self._given:
            await self._etcd.close()
        self._etcd = self._given

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``client.<method>(...)``, with etcd's errors as ``ServiceUnavailable``."""
        client = await self._client()
        try:
            result = await getattr(client, method)(*args, **kwargs)
        except aetcd.ClientError as exc:
            if isinstance(exc, _LOST_CONNECTION) and client is not self._given:
                self._etcd = None  # the next call connects again, to the first host that answers
                await client.close()
            raise ServiceUnavailable(
                f"etcd at {self.url}: {type(exc).__name__}: {exc}", id=SYNC_ID
            ) from exc
        raise_if_cancelled()  # a waiter stopped while it polled must stop, not poll on
        return result

    async def _acquire(self, name: str, owner: str, ttl: float) -> int | None:
        key, claim_key = self.lock_key(name), self.claim_key(name)
        if (name, owner) not in self._polling:
            # A first attempt takes the lock at once if it is free and unclaimed, as the
            # textbook etcd lock does; only a waiter that found it taken looks first.
            lease = await self._call("lease", _seconds(ttl))
            taken, responses = await self._call(
                "transaction",
                compare=[ops.create(key) == 0, ops.create(claim_key) == 0],
                success=[ops.put(key, owner.encode(), lease=lease.id), ops.get(key)],
                failure=[],
            )
            if taken:
                return self._took(name, owner, lease.id, responses[1][0][1].create_revision)
            await self._revoke(lease.id)
            if len(self._polling) >= _MAX_POLLING:  # left by waiters that gave up
                self._polling.clear()
            self._polling.add((name, owner))
            return None
        # A look first, so that a waiter polling a held lock costs etcd no lease.
        free, responses = await self._call(
            "transaction", compare=[ops.create(key) == 0], success=[ops.get(claim_key)], failure=[]
        )
        if not free:
            return None
        claim = responses[0][0][1] if responses[0] else None
        if claim is not None and _stands_before(claim.value, owner, since=None):
            return None
        lease = await self._call("lease", _seconds(ttl))
        claim_unchanged = (
            ops.create(claim_key) == 0
            if claim is None
            else ops.mod(claim_key) == claim.mod_revision
        )
        taken, responses = await self._call(
            "transaction",
            compare=[ops.create(key) == 0, claim_unchanged],
            success=[
                ops.put(key, owner.encode(), lease=lease.id),
                ops.delete(claim_key),
                ops.get(key),
            ],
            failure=[],
        )
        if not taken:  # someone got in between the look and the take
            await self._revoke(lease.id)
            return None
        return self._took(name, owner, lease.id, responses[2][0][1].create_revision)

    def _took(self, name: str, owner: str, lease_id: int, token: int) -> int:
        self._polling.discard((name, owner))
        self._lease_ids[(name, owner, token)] = lease_id
        return token

    async def _claim(self, name: str, owner: str, since: float, claim: float) -> bool:
        claim_key = self.claim_key(name)
        current = await self._call("get", claim_key)
        if current is not None and _stands_before(current.value, owner, since=since):
            return False
        value = orjson.dumps({"owner": owner, "since": since, "until": time.time() + claim})
        claimed, _ = await self._call(
            "transaction",
            compare=[
                ops.create(claim_key) == 0
                if current is None
                else ops.mod(claim_key) == current.mod_revision
            ],
            success=[ops.put(claim_key, value, lease=await self._claims_lease_id())],
            failure=[],
        )
        return bool(claimed)

    async def _renew(self, name: str, owner: str, token: int, ttl: float) -> bool:
        key = self.lock_key(name)
        lease = self._lease_ids.get((name, owner, token))
        if lease is None:  # not taken through this object: the key knows its etcd lease
            found = await self._call("get", key)
            if found is None or found.create_revision != token:
                return False
            lease = found.lease
        reply = await self._call("refresh_lease", lease)
        if reply is None or reply.TTL <= 0:  # the etcd lease ended, and the key with it
            return False
        ours, _ = await self._call(
            "transaction",
            compare=[ops.value(key) == owner.encode(), ops.create(key) == token],
            success=[],
            failure=[],
        )
        return bool(ours)

    async def _release(self, name: str, owner: str, token: int) -> None:
        lease = self._lease_ids.pop((name, owner, token), None)
        if lease is not None:  # revoking deletes the key only while it is still attached: ours
            await self._revoke(lease)
            return
        key = self.lock_key(name)
        await self._call(
            "transaction",
            compare=[ops.value(key) == owner.encode(), ops.create(key) == token],
            success=[ops.delete(key)],
            failure=[],
        )

    async def _revoke(self, lease: int) -> None:
        try:
            await self._call("revoke_lease", lease)
        except ServiceUnavailable as exc:
            if "lease not found" not in str(exc):  # expired already: nothing to revoke
                raise

    async def _claims_lease_id(self) -> int:
        """The etcd lease this object's claims hang on, refreshed while claims are made."""
        now = time.monotonic()
        if self._claims_lease is not None and now < self._claims_lease_due:
            return self._claims_lease
        if self._claims_lease is not None:
            reply = await self._call("refresh_lease", self._claims_lease)
            if reply is None or reply.TTL <= 0:
                self._claims_lease = None
        if self._claims_lease is None:
            self._claims_lease = (await self._call("lease", CLAIMS_TTL)).id
        self._claims_lease_due = now + CLAIMS_TTL / 3
        return self._claims_lease


def _stands_before(value: bytes, owner: str, *, since: float | None) -> bool:
    """Whether the stored claim ``value`` is another waiter's, has not lapsed, and (given the
    ``since`` of ``owner``) began no later."""
    stored = orjson.loads(value)
    if stored["owner"] == owner or stored["until"] <= time.time():
        return False
    return since is None or stored["since"] <= since


def _seconds(ttl: float) -> int:
    return max(1, math.ceil(ttl))
