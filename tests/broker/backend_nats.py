"""``nats://``: a JetStream stream and a subject prefix of its own for each test, deleted after."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable

import nats
import nats.js.errors
from asgi_micro_nats.broker import NATSBroker

from asgi_micro.broker import Broker
from asgi_micro.plugins import Parts
from tests.helpers import require_server

HOST, PORT = "127.0.0.1", 4222
SERVER = f"nats://{HOST}:{PORT}"


def namespace(**options: str) -> str:
    """A ``nats://`` URL naming a stream and a prefix nobody else uses."""
    suffix = uuid.uuid4().hex[:12]
    query = "&".join(
        f"{name}={value}"
        for name, value in {"stream": f"T_{suffix}", "prefix": f"t{suffix}", **options}.items()
    )
    return f"{SERVER}?{query}"


async def delete_stream(url: str) -> None:
    stream = NATSBroker.from_url(url).stream
    nc = await nats.connect(SERVER)
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await nc.jetstream().delete_stream(stream)
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def brokers(**options: str) -> AsyncIterator[Callable[[str], Broker]]:
    require_server("NATS", HOST, PORT)
    url = namespace(**options)
    try:
        yield lambda source: NATSBroker.from_url(url, parts=Parts(service=source))
    finally:
        await delete_stream(url)
