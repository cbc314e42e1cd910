"""``memory://``: locks among the tasks of one process, for tests and single-process services.

Tokens count per name for the life of this object; they start again with a new one.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .base import Sync

if TYPE_CHECKING:
    from ..plugins import Parts

__all__ = ["MemorySync"]


class MemorySync(Sync):
    """Leases in this object, expiring by ``time.monotonic()``."""

    def __init__(self) -> None:
        super().__init__()
        self.url = "memory://"
        self._holders: dict[str, tuple[str, int, float]] = {}  # name -> owner, token, expiry
        self._tokens: dict[str, int] = {}
        self._claims: dict[str, tuple[str, float, float]] = {}  # name -> owner, since, expiry

    @classmethod
    def from_url(cls, url: str, *, parts: Parts | None = None) -> MemorySync:
        return cls()

    async def _acquire(self, name: str, owner: str, ttl: float) -> int | None:
        now = time.monotonic()
        holder = self._holders.get(name)
        if holder is not None and holder[2] > now:
            return None
        claim = self._claims.get(name)
        if claim is not None and claim[0] != owner and claim[2] > now:
            return None
        self._claims.pop(name, None)
        token = self._tokens[name] = self._tokens.get(name, 0) + 1
        self._holders[name] = (owner, token, now + ttl)
        return token

    async def _claim(self, name: str, owner: str, since: float, claim: float) -> bool:
        now = time.monotonic()
        current = self._claims.get(name)
        if current is None or current[0] == owner or current[2] <= now or current[1] > since:
            self._claims[name] = (owner, since, now + claim)
            return True
        return False

    async def _renew(self, name: str, owner: str, token: int, ttl: float) -> bool:
        now = time.monotonic()
        holder = self._holders.get(name)
        if holder is None or holder[:2] != (owner, token) or holder[2] <= now:
            return False
        self._holders[name] = (owner, token, now + ttl)
        return True

    async def _release(self, name: str, owner: str, token: int) -> None:
        holder = self._holders.get(name)
        if holder is not None and holder[:2] == (owner, token):
            del self._holders[name]
