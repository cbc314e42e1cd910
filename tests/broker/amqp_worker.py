"""A queue-group member in a process of its own, for ``test_amqp``'s kill test.

    python -m tests.broker.amqp_worker URL TOPIC GROUP RECORD

It appends ``<event id> <delivery>`` to RECORD as it starts handling each event, synced to
disk, then works on it a little while (so that a kill finds events recorded and not acked),
prints ``ready`` once subscribed, and exits after a minute at most (the test kills it first).
"""

from __future__ import annotations

import asyncio
import os
import sys

from asgi_micro_amqp.broker import AMQPBroker

from asgi_micro.broker import Event
from asgi_micro.plugins import Parts

LIFETIME = 60.0
WORK = 0.02
CONCURRENCY = 8


async def main(url: str, topic: str, group: str, record: str) -> None:
    descriptor = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    async def handle(event: Event) -> None:
        os.write(descriptor, f"{event.id} {event.deliveries}\n".encode())
        os.fsync(descriptor)
        await asyncio.sleep(WORK)

    broker = AMQPBroker.from_url(url, parts=Parts(service="worker"))
    async with broker:
        await broker.subscribe(topic, handle, queue=group, concurrency=CONCURRENCY)
        print("ready", flush=True)
        await asyncio.sleep(LIFETIME)
    os.close(descriptor)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
