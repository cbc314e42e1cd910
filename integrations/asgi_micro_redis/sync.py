"""``redis://``: locks on Redis, with redis-py's asyncio client.

    redis://127.0.0.1:6379/0?prefix=micro:sync

A lease is the key ``<prefix>:<name>`` holding ``<owner>:<token>``, set with ``PX`` so that it
expires by Redis's clock; ``<prefix>:<name>:token`` counts acquisitions (``INCR``) and is never
expired, so tokens keep growing as long as Redis keeps its data. Acquiring, renewing and
releasing are Lua scripts (Redis runs each atomically): acquiring takes the next token only
when the key is free and no other waiter's claim ``<prefix>:<name>:next`` (a hash of owner and
since, expiring by ``PX``) stands, so no holder can get a token below an earlier holder's and
the longest waiter goes next; renewing and
releasing act only while the key still holds this owner and token. Other query options go to
redis-py, as for the Redis broker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from asgi_micro.errors import ServiceUnavailable
from asgi_micro.sync import SYNC_ID, Sync

from .broker import _redacted, _retry

if TYPE_CHECKING:
    from asgi_micro.plugins import Parts

__all__ = ["ACQUIRE", "CLAIM", "RELEASE", "RENEW", "RedisSync"]

ACQUIRE: Final = """
-- KEYS[1] lease, KEYS[2] token counter, KEYS[3] claim; ARGV[1] owner, ARGV[2] ttl in ms.
-- Returns the new token, or false while someone holds the lease or another waiter is next.
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local claimant = redis.call('HGET', KEYS[3], 'owner')
if claimant and claimant ~= ARGV[1] then return false end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. token, 'PX', ARGV[2])
redis.call('DEL', KEYS[3])
return token
"""

CLAIM: Final = """
-- KEYS[1] claim; ARGV[1] owner, ARGV[2] since, ARGV[3] claim in ms. 1 if next in line.
local current = redis.call('HMGET', KEYS[1], 'owner', 'since')
if current[1] and current[1] ~= ARGV[1] and tonumber(current[2]) <= tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'since', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

RENEW: Final = """
-- KEYS[1] lease; ARGV[1] '<owner>:<token>', ARGV[2] ttl in ms. 1 if renewed, 0 if not ours.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

RELEASE: Final = """
-- KEYS[1] lease; ARGV[1] '<owner>:<token>'. 1 if deleted, 0 if not ours.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisSync(Sync):
    """Leases on Redis. ``redis`` is the client (closed by ``stop`` only when ``from_url``
    made it); ``prefix`` starts every key."""

    def __init__(self, redis: Redis, *, url: str = "redis://", prefix: str = "micro:sync") -> None:
        super().__init__()
        if not prefix:
            raise ValueError("a Redis sync needs a key prefix")
        self.redis = redis
        self.url = url
        self.prefix = prefix
        self._owns_client = False
        self._acquire_script = redis.register_script(ACQUIRE)
        self._claim_script = redis.register_script(CLAIM)
        self._renew_script = redis.register_script(RENEW)
        self._release_script = redis.register_script(RELEASE)

    @classmethod
    def from_url(cls, url: str, *, parts: Parts | None = None) -> Self:
        split = urlsplit(url)
        query = parse_qsl(split.query, keep_blank_values=True)
        prefix = next((value for name, value in query if name == "prefix"), "micro:sync")
        theirs = [(name, value) for name, value in query if name != "prefix"]
        client = Redis.from_url(urlunsplit(split._replace(query=urlencode(theirs))), retry=_retry())
        sync = cls(client, url=_redacted(url), prefix=prefix)
        sync._owns_client = True
        return sync

    def key(self, name: str) -> str:
        """The key of the lease on ``name``."""
        return f"{self.prefix}:{name}"

    async def _open(self) -> None:
        try:
            await self.redis.ping()
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise ServiceUnavailable(
                f"Redis at {self.url} is unreachable: {exc}", id=SYNC_ID
            ) from exc

    async def _close(self) -> None:
        if self._owns_client:
            await self.redis.aclose()

    async def _acquire(self, name: str, owner: str, ttl: float) -> int | None:
        key = self.key(name)
        token = await self._acquire_script(
            keys=[key, f"{key}:token", f"{key}:next"], args=[owner, _ms(ttl)]
        )
        return None if token is None else int(token)

    async def _claim(self, name: str, owner: str, since: float, claim: float) -> bool:
        claimed = await self._claim_script(
            keys=[f"{self.key(name)}:next"], args=[owner, repr(since), _ms(claim)]
        )
        return bool(claimed)

    async def _renew(self, name: str, owner: str, token: int, ttl: float) -> bool:
        renewed = await self._renew_script(
            keys=[self.key(name)], args=[f"{owner}:{token}", _ms(ttl)]
        )
        return bool(renewed)

    async def _release(self, name: str, owner: str, token: int) -> None:
        await self._release_script(keys=[self.key(name)], args=[f"{owner}:{token}"])


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
