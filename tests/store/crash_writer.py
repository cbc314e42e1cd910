"""The child of the crash test: writes records one after another to a SQLite store and prints
each key once ``write`` has returned, until it is killed (or, at the latest, after 60 s)."""

from __future__ import annotations

import asyncio
import sys
import time

from asgi_micro.store.sql import SQLStore


def value_for(key: str) -> bytes:
    return key.encode() * 20


async def main(url: str) -> None:
    deadline = time.monotonic() + 60
    async with SQLStore.from_url(url) as store:
        for i in range(1_000_000):
            key = f"key/{i:07d}"
            await store.write(key, value_for(key))
            sys.stdout.write(key + "\n")
            sys.stdout.flush()
            if time.monotonic() > deadline:
                return


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
