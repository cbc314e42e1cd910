"""``http://``: every broker is a node of its own, a service whose app uvicorn serves on a free
loopback port, registered in a registry that the brokers of one test share (and no other
test sees), with its outbox in a directory of the test's own."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from starlette.applications import Starlette

from asgi_micro import Service
from asgi_micro.broker import Broker
from asgi_micro.broker.http import HTTPBroker
from asgi_micro.registry.memory import MemoryRegistry
from tests.helpers import free_port, serve


class ServedBroker(HTTPBroker):
    """The broker of a node that serves: ``start`` has the node serve and register first,
    as a service's start would before a subscriber of it subscribes."""

    def __init__(self, *, service_name: str, registry: MemoryRegistry, outbox: Path) -> None:
        super().__init__(registry=registry, source=service_name, outbox=outbox)
        port = free_port()
        self.service = Service(
            service_name,
            registry=registry,
            store="memory://",
            broker=self,
            grpc=False,
            address=f"127.0.0.1:{port}",
        )
        self.app = Starlette(lifespan=self.service.lifespan)
        self.port = port
        self._up = asyncio.Event()
        self._down = asyncio.Event()
        self._serving: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._serving is None:
            self._serving = asyncio.create_task(self._serve())
            up = asyncio.ensure_future(self._up.wait())
            await asyncio.wait([up, self._serving], return_when=asyncio.FIRST_COMPLETED)
            if not up.done():
                up.cancel()
                self._serving.result()  # it failed: say why
            await self.service.wait_registered()
        await super().start()

    async def _serve(self) -> None:
        async with serve(self.app, port=self.port):
            self._up.set()
            await self._down.wait()

    async def close(self) -> None:
        self._down.set()
        if self._serving is not None:
            await self._serving


@contextlib.asynccontextmanager
async def brokers() -> AsyncIterator[Callable[[str], Broker]]:
    registry = MemoryRegistry()
    made: list[ServedBroker] = []
    with tempfile.TemporaryDirectory(prefix="asgi-micro-http-broker-") as folder:

        def make(source: str) -> Broker:
            outbox = Path(folder) / f"{source}-{uuid.uuid4().hex[:8]}.db"
            broker = ServedBroker(service_name=source, registry=registry, outbox=outbox)
            made.append(broker)
            return broker

        try:
            yield make
        finally:
            for broker in made:
                await broker.stop()
                await broker.close()
