"""Makes HTTP calls from inside a host's namespace for a test in the root namespace.

Run as ``ip netns exec NS python tests/multihost/driver.py``: it reads one JSON request a line
on stdin and answers each with one JSON line on stdout, tagged with the request's ``id``;
requests run concurrently, so a load can go on while the test asks for something else. It
exits when stdin closes.

- ``{"op": "get", "url": U, "timeout": S}``: ``{"status": 200, "body": ...}`` (JSON decoded
  when it is JSON) or ``{"error": "..."}``.
- ``{"op": "load", "urls": [U...], "count": N, "seconds": S, "concurrency": C, "rate": R,
  "timeout": S}``: GET the URLs in turn from C workers until N calls were made or S seconds
  passed, starting at most R calls a second (as fast as they go when R is null);
  ``{"calls": [{"url", "at", "took", "status" or "error"}...]}``, ``at`` and ``took`` in
  seconds from the start of the load.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from typing import Any

import httpx
import orjson


async def get(http: httpx.AsyncClient, url: str, timeout: float) -> dict[str, Any]:
    try:
        response = await http.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    return {"status": response.status_code, "body": body}


async def load(
    http: httpx.AsyncClient,
    urls: list[str],
    count: int,
    seconds: float,
    concurrency: int,
    rate: float | None,
    timeout: float,
) -> dict[str, Any]:
    started = time.monotonic()
    numbers = itertools.count()
    calls: list[dict[str, Any]] = []

    async def worker() -> None:
        while (number := next(numbers)) < count and time.monotonic() - started < seconds:
            if rate is not None:
                await asyncio.sleep(started + number / rate - time.monotonic())
            url = urls[number % len(urls)]
            at = time.monotonic()
            result = await get(http, url, timeout)
            calls.append({"url": url, "at": at - started, "took": time.monotonic() - at, **result})

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"calls": calls}


async def answer(http: httpx.AsyncClient, request: dict[str, Any]) -> None:
    options = {key: value for key, value in request.items() if key not in ("id", "op")}
    if request["op"] == "get":
        result = await get(http, **options)
    elif request["op"] == "load":
        result = await load(http, **options)
    else:
        result = {"error": f"unknown op {request['op']!r}"}
    sys.stdout.buffer.write(orjson.dumps({"id": request["id"], **result}) + b"\n")
    sys.stdout.buffer.flush()


async def main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(trust_env=False, limits=limits) as http, asyncio.TaskGroup() as tg:
        while line := await reader.readline():
            tg.create_task(answer(http, orjson.loads(line)))


if __name__ == "__main__":
    asyncio.run(main())
