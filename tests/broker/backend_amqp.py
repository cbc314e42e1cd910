"""``amqp://``: RabbitMQ, with an exchange of its own for each test; the exchanges and every
queue declared in it are deleted after."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from urllib.parse import urlencode

import aio_pika
from asgi_micro_amqp.broker import AMQPBroker

from asgi_micro.broker import Broker
from asgi_micro.plugins import Parts
from tests.helpers import require_server

HOST, PORT = "127.0.0.1", 5672
SERVER = f"amqp://guest:guest@{HOST}:{PORT}/"


@dataclass(eq=False)
class Namespace:
    """An exchange nobody else uses, the brokers made in it, and the queues to delete after
    (those the brokers declared, and ``queues`` that other processes did)."""

    exchange: str
    made: list[AMQPBroker] = field(default_factory=list)
    queues: set[str] = field(default_factory=set)
    server: str = SERVER

    def url(self, source: str, **options: str) -> str:
        """A broker's URL in this namespace; its connection is named after both."""
        query = {
            "exchange": self.exchange,
            "name": self.connection_name(source),
            "reconnect_interval": "0.5",
            **options,
        }
        return f"{self.server}?{urlencode(query)}"

    def connection_name(self, source: str) -> str:
        return f"{self.exchange} {source}"

    def make(self, source: str, **options: str) -> AMQPBroker:
        broker = AMQPBroker.from_url(self.url(source, **options), parts=Parts(service=source))
        self.made.append(broker)
        return broker


@contextlib.asynccontextmanager
async def namespace() -> AsyncIterator[Namespace]:
    require_server("RabbitMQ", HOST, PORT)
    space = Namespace(f"test.{uuid.uuid4().hex}")
    try:
        yield space
    finally:
        for broker in space.made:
            await broker.stop()
        queues = space.queues.union(*(broker.queues for broker in space.made))
        connection = await aio_pika.connect(SERVER)
        try:
            channel = await connection.channel()
            for queue in sorted(queues):
                await channel.queue_delete(queue)
            for exchange in (space.exchange, f"{space.exchange}:delay"):
                await channel.exchange_delete(exchange)
        finally:
            await connection.close()


@contextlib.asynccontextmanager
async def brokers() -> AsyncIterator[Callable[[str], Broker]]:
    async with namespace() as space:
        yield space.make
