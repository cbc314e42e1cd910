"""The child of the Redis crash test: a member of the queue group ``workers`` on a topic that
records each event it handles in Redis before the ack (so every acknowledged event is on
record): its id in the set ``RECORD``, how often it was handled in the hash ``RECORD:count``, and
the ids handled on a second or later delivery in the set ``RECORD:again``. Prints ``ready`` once
subscribed and stops on SIGTERM (or, at the latest, after 90 s).

    python -m tests.broker.redis_member URL TOPIC RECORD
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

import redis.asyncio
from asgi_micro_redis.broker import RedisBroker

from asgi_micro.broker import Event
from asgi_micro.plugins import Parts

HANDLING = 0.04  # seconds per event: slower than the publisher, so deliveries are in flight
CONCURRENCY = 8


async def main(url: str, topic: str, record: str) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    recorder = redis.asyncio.Redis.from_url(url.partition("?")[0])

    async def handle(event: Event) -> None:
        await asyncio.sleep(HANDLING)
        async with recorder.pipeline(transaction=True) as pipe:
            pipe.sadd(record, event.id)
            pipe.hincrby(f"{record}:count", event.id, 1)
            if event.deliveries > 1:
                pipe.sadd(f"{record}:again", event.id)
            await pipe.execute()

    try:
        async with RedisBroker.from_url(url, parts=Parts(service="crash-member")) as broker:
            await broker.subscribe(topic, handle, queue="workers", concurrency=CONCURRENCY)
            sys.stdout.write("ready\n")
            sys.stdout.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=90)
    finally:
        await recorder.aclose()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
