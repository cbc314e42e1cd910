"""A node of the embedded broker's process tests, configured by its environment.

``NODE_ROLE=subscriber`` handles ``NODE_TOPIC`` in queue group ``workers`` (``NODE_DELAY``
seconds each, ``NODE_CONCURRENCY`` at once) and appends each event's ``n`` to
``NODE_RECORD`` before it returns. ``NODE_ROLE=publisher`` publishes ``n`` from
``NODE_FIRST`` up to ``NODE_COUNT`` on ``NODE_TOPIC`` once it serves, one every
``NODE_INTERVAL`` seconds, and appends each ``n`` to ``NODE_ACCEPTED`` once ``publish``
returned. The files are opened with ``O_APPEND`` and written with one ``write`` each: what
was written survives the process being killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from asgi_micro import Service

logger = logging.getLogger(__name__)

ROLE = os.environ["NODE_ROLE"]
TOPIC = os.environ["NODE_TOPIC"]
service = Service(os.environ["NODE_SERVICE"], grpc=False)


class Item(BaseModel):
    n: int


def _appender(variable: str) -> int:
    return os.open(os.environ[variable], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


if ROLE == "subscriber":
    record = _appender("NODE_RECORD")
    delay = float(os.environ.get("NODE_DELAY", "0"))

    @service.subscribe(
        TOPIC, queue="workers", concurrency=int(os.environ.get("NODE_CONCURRENCY", "16"))
    )
    async def handle(item: Item) -> None:
        if delay:
            await asyncio.sleep(delay)
        os.write(record, b"%d\n" % item.n)


async def publish_all() -> None:
    accepted = _appender("NODE_ACCEPTED")
    interval = float(os.environ.get("NODE_INTERVAL", "0"))
    try:
        for n in range(int(os.environ.get("NODE_FIRST", "0")), int(os.environ["NODE_COUNT"])):
            await service.publish(TOPIC, Item(n=n))
            os.write(accepted, b"%d\n" % n)
            if interval:
                await asyncio.sleep(interval)
    except Exception:
        logger.exception("publishing failed")
        raise


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    async with service.lifespan(app) as state:
        publishing = asyncio.create_task(publish_all()) if ROLE == "publisher" else None
        yield state
        if publishing is not None:
            publishing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publishing


app = FastAPI(lifespan=lifespan)
