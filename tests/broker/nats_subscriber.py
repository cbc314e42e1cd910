"""The child of the NATS crash test: a member of the queue group ``workers`` on a topic that
appends ``<event id> <delivery> <pid>`` to a file for each event it handles (before the ack, so
every acknowledged event is on file: a line written with ``os.write`` survives SIGKILL), prints
``ready`` once subscribed, and stops on SIGTERM (or, at the latest, after 90 s).

    python -m tests.broker.nats_subscriber URL TOPIC RECORD_FILE
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys

from asgi_micro_nats.broker import NATSBroker

from asgi_micro.broker import Event
from asgi_micro.plugins import Parts

HANDLING = 0.02  # seconds per event: slower than the publisher, so deliveries are in flight
CONCURRENCY = 4


async def main(url: str, topic: str, record: str) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    fd = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pid = os.getpid()

    async def handle(event: Event) -> None:
        await asyncio.sleep(HANDLING)
        os.write(fd, f"{event.id} {event.deliveries} {pid}\n".encode())

    try:
        async with NATSBroker.from_url(url, parts=Parts(service="crash-subscriber")) as broker:
            await broker.subscribe(topic, handle, queue="workers", concurrency=CONCURRENCY)
            sys.stdout.write("ready\n")
            sys.stdout.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=90)
    finally:
        os.close(fd)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
