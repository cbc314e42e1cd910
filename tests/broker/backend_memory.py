"""``memory://``: a hub of its own for each test."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable

from asgi_micro.broker import Broker
from asgi_micro.broker.memory import MemoryBroker


@contextlib.asynccontextmanager
async def brokers() -> AsyncIterator[Callable[[str], Broker]]:
    url = f"memory://{uuid.uuid4().hex}"
    yield lambda source: MemoryBroker(url, source=source)
