"""What the multi-host tests run on the hosts of a ``Network``: a ``Driver`` that makes HTTP
calls from a host (the test itself, in the root namespace, cannot reach the hosts) and service
processes (``HostedServer``); the engines are in ``tests/multihost/engines.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tests.helpers import eventually
from tests.multihost.network import Host
from tests.processes import ASGI_MICRO, ROOT, Server

__all__ = ["Driver", "HostedServer", "driver"]

_DRIVER = Path(__file__).with_name("driver.py")


class Driver:
    """``tests/multihost/driver.py`` running on ``host``: ``await driver.get(url)``,
    ``await driver.load(...)``, concurrently."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count()

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            *self.host.run(sys.executable, str(_DRIVER)),
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=2**24,
        )
        self._reader = asyncio.create_task(self._read())

    async def stop(self) -> None:
        if self._process is None:
            return
        assert self._process.stdin is not None
        self._process.stdin.close()
        try:
            await asyncio.wait_for(self._process.wait(), 10)
        except TimeoutError:
            self._process.kill()
            await self._process.wait()
        if self._reader is not None:
            await self._reader

    async def request(self, op: str, **options: Any) -> dict[str, Any]:
        assert self._process is not None
        assert self._process.stdin is not None
        number = next(self._ids)
        answer = self._waiting[number] = asyncio.get_running_loop().create_future()
        self._process.stdin.write(orjson.dumps({"id": number, "op": op, **options}) + b"\n")
        await self._process.stdin.drain()
        result: dict[str, Any] = await answer
        return result

    async def get(self, url: str, *, timeout: float = 5.0) -> dict[str, Any]:
        """``{"status": ..., "body": ...}`` or ``{"error": ...}``."""
        return await self.request("get", url=url, timeout=timeout)

    async def load(
        self,
        urls: list[str],
        *,
        count: int,
        seconds: float,
        concurrency: int = 4,
        rate: float | None = None,
        timeout: float = 10.0,
    ) -> list[dict[str, Any]]:
        """At most ``count`` calls in at most ``seconds`` (plus one call's ``timeout``), at
        most ``rate`` a second; each ``{"url", "at", "took", "status", "body"}`` or with an
        ``"error"``."""
        answer = await self.request(
            "load", urls=urls, count=count, seconds=seconds, concurrency=concurrency,
            rate=rate, timeout=timeout,
        )  # fmt: skip
        calls: list[dict[str, Any]] = answer["calls"]
        return calls

    async def _read(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        while line := await self._process.stdout.readline():
            answer = orjson.loads(line)
            self._waiting.pop(answer.pop("id")).set_result(answer)
        for waiting in self._waiting.values():
            waiting.set_exception(RuntimeError(f"the driver on {self.host.name} exited"))


@contextlib.asynccontextmanager
async def driver(host: Host) -> AsyncIterator[Driver]:
    calls = Driver(host)
    try:
        await calls.start()
        yield calls
    finally:
        await calls.stop()


@dataclass
class HostedServer(Server):
    """``asgi-micro run TARGET --host <its address>`` on ``host`` (or with the ``--host``
    that ``args`` give); ``ready`` asks through ``via``, a driver on some host."""

    host: Host | None = None
    via: Driver | None = None
    port: int = 8000  # a host of its own: no other process wants the port
    command: tuple[str, ...] = field(default=())
    args: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        assert self.host is not None
        self.command = tuple(self.host.run(*ASGI_MICRO))
        if "--host" not in self.args:
            self.args = ("--host", self.host.address, *self.args)

    @property
    def address(self) -> str:
        assert self.host is not None
        return f"{self.host.name}:{self.port}"

    async def ready(self, *, timeout: float = 30.0) -> None:
        assert self.via is not None

        async def serving() -> bool:
            assert self.process is not None
            assert self.via is not None
            if self.process.returncode is not None:
                raise AssertionError(f"{self.target} exited early:\n{self.output()}")
            answer = await self.via.get(f"{self.url}/_micro/health", timeout=1.0)
            return answer.get("status") == 200 and answer["body"]["status"] == "serving"

        await eventually(serving, timeout=timeout, interval=0.05, message=f"{self} serving")

    async def stats(self) -> dict[str, Any]:
        """Its ``/_micro/stats``: ``requests`` counts the calls it served."""
        assert self.via is not None
        answer = await self.via.get(f"{self.url}/_micro/stats")
        assert answer.get("status") == 200, answer
        stats: dict[str, Any] = answer["body"]
        return stats

    def __str__(self) -> str:
        assert self.host is not None
        return f"asgi-micro run {self.target} on {self.host.name} ({self.host.address})"
