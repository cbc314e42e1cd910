"""``redis://``: a key prefix of its own for each test; every key under it deleted after."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable

import redis.asyncio
from asgi_micro_redis.broker import RedisBroker

from asgi_micro.broker import Broker
from asgi_micro.plugins import Parts
from tests.helpers import require_server

HOST, PORT = "127.0.0.1", 6379
SERVER = f"redis://{HOST}:{PORT}/0"


def namespace(**options: str) -> tuple[str, str]:
    """A ``redis://`` URL with a key prefix nobody else uses, and that prefix."""
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    query = "&".join(f"{name}={value}" for name, value in {"prefix": prefix, **options}.items())
    return f"{SERVER}?{query}", prefix


async def delete_keys(prefix: str) -> None:
    client = redis.asyncio.Redis.from_url(SERVER)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def brokers(**options: str) -> AsyncIterator[Callable[[str], Broker]]:
    require_server("Redis", HOST, PORT)
    url, prefix = namespace(**options)
    try:
        yield lambda source: RedisBroker.from_url(url, parts=Parts(service=source))
    finally:
        await delete_keys(prefix)
