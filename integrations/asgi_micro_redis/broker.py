"""``redis://``: events on Redis Streams, with redis-py's asyncio client.

    redis://127.0.0.1:6379/0?prefix=micro&maxlen=100000&reclaim_idle=30&block=2

Each topic is one stream, ``<prefix>:<topic>``; an event is one entry whose fields are its
headers under their own names and its body under ``:body`` (binary as it is). Publishing is
``XADD`` with approximate trimming to ``maxlen`` entries (``MAXLEN ~``; ``maxlen=0`` never
trims): a generous length, since trimming does not ask whether a group has handled an entry.

A queue group is a consumer group of the topic's stream, made at ``$`` (it gets what is
published once it exists) and kept; each subscription is a consumer of its own. An ack is
``XACK`` (the entry stays in the stream for other groups, until trimmed); a nack leaves the
entry pending and due for reclaiming after the delay; a member reclaims, with ``XAUTOCLAIM``,
what any member has left idle for longer than ``reclaim_idle`` seconds: what a killed member
had taken. The delivery count is the server's (``XPENDING``'s times delivered). Broadcast
subscriptions read the stream with ``XREAD`` from where it stood when they were made.
See ``readers`` and ``groups`` for the readers, and ``docs/broker.md`` for the whole story.

Other query options (``socket_timeout``, ``client_name``, ``health_check_interval``...) go to
redis-py. A client made from the URL reconnects and retries a command that met a broken
connection (redis-py's ``Retry``, exponential backoff with jitter); a reader whose retries ran
out keeps trying, slower and slower, until Redis is back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from asgi_micro.broker import Broker, Subscription
from asgi_micro.broker.base import check_topic
from asgi_micro.errors import ServiceUnavailable

from .groups import GroupReader
from .readers import BODY, BroadcastReader, Reader

if TYPE_CHECKING:
    from asgi_micro.plugins import Parts

__all__ = ["RedisBroker"]

BROKER_ID: Final = "asgi_micro.broker"
OPTIONS: Final = ("prefix", "maxlen", "reclaim_idle", "block")


class RedisBroker(Broker):
    """Events on Redis Streams. ``redis`` is the client (it is closed by ``stop`` only when
    ``from_url`` made it); ``prefix`` starts every key; ``maxlen`` bounds each stream
    (approximately; 0: unbounded); ``reclaim_idle`` is how long an entry a member took may sit
    unsettled before another member takes it over, and the longest a nack delays;
    ``block`` is the longest a read waits on the server (at most half the socket timeout)."""

    def __init__(
        self,
        redis: Redis,
        *,
        url: str = "redis://",
        source: str = "",
        prefix: str = "micro",
        maxlen: int = 100_000,
        reclaim_idle: float = 30.0,
        block: float = 2.0,
    ) -> None:
        if not prefix:
            raise ValueError("a Redis broker needs a key prefix")
        if maxlen < 0:
            raise ValueError(f"maxlen must be 0 (unbounded) or more, got {maxlen}")
        if reclaim_idle <= 0 or block <= 0:
            raise ValueError("reclaim_idle and block must be positive (seconds)")
        self.redis = redis
        self.url = url
        self.source = source
        self.prefix = prefix
        self.maxlen = maxlen
        self.reclaim_idle = reclaim_idle
        self.block = block
        self._owns_client = False
        self._readers: dict[Subscription, Reader] = {}

    @classmethod
    def from_url(cls, url: str, *, parts: Parts | None = None) -> Self:
        split = urlsplit(url)
        query = parse_qsl(split.query, keep_blank_values=True)
        ours = {name: value for name, value in query if name in OPTIONS}
        theirs = [(name, value) for name, value in query if name not in OPTIONS]
        try:
            maxlen = int(ours.get("maxlen", 100_000))
            reclaim_idle = float(ours.get("reclaim_idle", 30.0))
            block = float(ours.get("block", 2.0))
        except ValueError as exc:
            raise ValueError(f"bad option in the broker URL {_redacted(url)!r}: {exc}") from exc
        client = Redis.from_url(urlunsplit(split._replace(query=urlencode(theirs))), retry=_retry())
        broker = cls(
            client,
            url=_redacted(url),
            source=parts.service if parts is not None else "",
            prefix=ours.get("prefix", "micro"),
            maxlen=maxlen,
            reclaim_idle=reclaim_idle,
            block=block,
        )
        broker._owns_client = True
        return broker

    def key(self, topic: str) -> str:
        """The stream of ``topic``."""
        return f"{self.prefix}:{topic}"

    async def start(self) -> None:
        try:
            await self.redis.ping()
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise ServiceUnavailable(
                f"Redis at {self.url} is unreachable: {exc}", id=BROKER_ID
            ) from exc

    async def stop(self) -> None:
        for subscription in list(self._readers):
            await self.unsubscribe(subscription)
        if self._owns_client:
            await self.redis.aclose()

    async def publish_raw(self, topic: str, body: bytes, headers: Mapping[str, str]) -> None:
        check_topic(topic)
        fields: dict[Any, Any] = {BODY: body}
        for name, value in headers.items():
            if name.startswith(":"):
                raise ValueError(f"a header name cannot start with ':', got {name!r}")
            fields[name.encode()] = value.encode()
        try:
            await self.redis.xadd(
                self.key(topic), fields, maxlen=self.maxlen or None, approximate=True
            )
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise ServiceUnavailable(
                f"could not publish on {topic} to Redis at {self.url}: {exc}", id=BROKER_ID
            ) from exc

    async def attach(self, subscription: Subscription) -> None:
        reader: Reader
        if subscription.queue is None:
            reader = BroadcastReader(self, subscription)
        else:
            reader = GroupReader(self, subscription)
        try:
            await reader.start()
        except (RedisConnectionError, RedisTimeoutError) as exc:
            await reader.stop()
            raise ServiceUnavailable(
                f"could not subscribe to {subscription.topic} on Redis at {self.url}: {exc}",
                id=BROKER_ID,
            ) from exc
        self._readers[subscription] = reader

    async def unsubscribe(self, subscription: Subscription) -> None:
        reader = self._readers.pop(subscription, None)
        if reader is None:
            return
        subscription.active = False
        await reader.stop()


def _retry() -> Retry:
    """What a client made from a URL does on a broken connection or a timeout: reconnect and
    send the command again, up to 10 times over about 5 s (redis-py's defaults for a client
    it makes itself; ``Redis.from_url`` would not retry at all)."""
    return Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.01), retries=10)


def _redacted(url: str) -> str:
    split = urlsplit(url)
    if split.password is None:
        return url
    host = split.netloc.rpartition("@")[2]
    user = split.username or ""
    return urlunsplit(split._replace(netloc=f"{user}:***@{host}"))
