"""The RPC client against the raw HTTP clients, same Starlette endpoint, same run.

    python benchmarks/client.py [--rounds 6] [--seconds 2] [--concurrency 1 64]

Rows (see ``benchmarks/transport.py`` for the server, the load loop and the measurements):

- ``aiohttp`` and ``httpx``: raw ``aiohttp.ClientSession`` and ``httpx.AsyncClient`` loops;
- ``call``: ``service.client.call("echo", "Echo.Echo", {...})``, resolved through a registry
  (selection, ejection and retry bookkeeping included), JSON encoded and decoded;
- ``service.http``: ``service.http().post("http://echo/echo", ...)``, an ``httpx.AsyncClient``
  whose host is a service name.

The issue's bars: ``call`` at concurrency 64 at least 0.8x aiohttp (goal 1.0x), ``service.http``
at least 5x raw httpx.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).parent))
import transport

PAYLOAD = orjson.loads(transport.BODY)


@asynccontextmanager
async def running_service(port: int) -> AsyncIterator[object]:
    from asgi_micro import Service
    from asgi_micro.registry import Endpoint, Node
    from asgi_micro.registry import Service as ServiceRecord
    from asgi_micro.registry.memory import MemoryRegistry

    registry = MemoryRegistry()
    await registry.register(
        ServiceRecord(
            name="echo",
            endpoints=[Endpoint("Echo.Echo", metadata={"method": "POST", "path": "/echo"})],
            nodes=[Node(id="echo-1", address=f"{transport.HOST}:{port}")],
        )
    )
    async with Service("bench", registry=registry, store="memory://") as service:
        yield service


@asynccontextmanager
async def call_client(port: int) -> AsyncIterator[transport.Send]:
    async with running_service(port) as service:

        async def send() -> None:
            reply = await service.client.call("echo", "Echo.Echo", PAYLOAD)  # type: ignore[attr-defined]
            if reply != PAYLOAD:
                raise RuntimeError(f"unexpected reply {reply!r}")

        yield send


@asynccontextmanager
async def service_http_client(port: int) -> AsyncIterator[transport.Send]:
    async with running_service(port) as service, service.http() as http:  # type: ignore[attr-defined]

        async def send() -> None:
            response = await http.post(
                "http://echo/echo", content=transport.BODY, headers=transport.HEADERS
            )
            transport.check(response.status_code, response.content)

        yield send


transport.CLIENTS.clear()
transport.CLIENTS.update(
    {
        "aiohttp": transport.aiohttp_client,
        "httpx": transport.httpx_client,
        "call": call_client,
        "service.http": service_http_client,
    }
)

if __name__ == "__main__":
    sys.argv[0] = __file__
    transport.main()
