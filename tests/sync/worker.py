"""The children of the process tests, printing one JSON line per event on stdout.

``counter SYNC_URL STORE_URL NAME COUNT [VICTIM_AT]``: adds one to a counter in the store COUNT
times, each under the lock NAME with a fenced write, and prints each acknowledged increment with
the time it held the lock; at increment VICTIM_AT it prints ``holding`` and waits for a line on
stdin, so that the test can stop or kill it while it holds the lock, before it writes; a
VICTIM_AT of ``+N`` waits for a line on stdin before it starts counting, too.

``leader SYNC_URL NAME``: campaigns for leadership of NAME and, while leader, checks its term
and prints ``acting`` every 50 ms; prints ``lost`` when the check fails.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from typing import Any

import orjson

from asgi_micro.errors import Conflict, NotFound
from asgi_micro.store import from_url as store_from_url
from asgi_micro.sync import LeaseLost
from asgi_micro.sync import from_url as sync_from_url

TTL = 1.0
DEADLINE = time.monotonic() + 120


def say(**event: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps({"pid": os.getpid(), "t": time.time(), **event}) + b"\n")
    sys.stdout.flush()


async def counter(
    sync_url: str, store_url: str, name: str, count: int, victim_at: int, *, held_back: bool
) -> None:
    async with sync_from_url(sync_url) as sync, store_from_url(store_url) as store:
        if held_back:  # starts counting when the test says so
            await asyncio.to_thread(sys.stdin.readline)
        for i in range(count):
            async with sync.lock(name, ttl=TTL, wait=60) as lease:
                start = time.time()
                try:
                    [record] = await store.read("counter")
                    value = int(record.value) + 1
                except NotFound:
                    value = 1
                if i == victim_at:
                    say(holding=lease.token)
                    # the test stops or kills this process now, and may let it go on later
                    await asyncio.to_thread(sys.stdin.readline)
                try:
                    await store.write("counter", b"%d" % value, fence=lease.fence)
                except Conflict:
                    say(refused=lease.token, lost=lease.lost.is_set() or not lease.held)
                    continue
                say(ack=value, token=lease.token, start=start, end=time.time())
            await asyncio.sleep(random.uniform(0, 0.003))  # let a waiter in
            if time.monotonic() > DEADLINE:
                return


async def leader(sync_url: str, name: str) -> None:
    async with sync_from_url(sync_url) as sync:
        while time.monotonic() < DEADLINE:
            async with sync.leader(name, ttl=TTL) as term:
                say(leader=term.token)
                while True:
                    try:
                        term.check()
                    except LeaseLost:
                        say(lost=term.token)
                        break
                    say(acting=term.token)
                    await asyncio.sleep(0.05)


if __name__ == "__main__":
    role, *args = sys.argv[1:]
    if role == "counter":
        sync_url, store_url, name, count, *victim = args
        victim_at = int(victim[0]) if victim else -1
        held_back = bool(victim) and victim[0].startswith("+")
        asyncio.run(counter(sync_url, store_url, name, int(count), victim_at, held_back=held_back))
    else:
        asyncio.run(leader(*args))
