"""Events: publish on a topic, subscribe with or without a queue group, delivered at least once.

``http://`` is the embedded default (no server: subscribers receive inside their app, the
publisher keeps what it has not delivered in a durable outbox); ``memory://`` keeps everything
in the process, with the same semantics, for tests; ``nats://`` (JetStream), ``redis://``
(Streams) and ``amqp://`` (RabbitMQ) come from ``integrations/`` with their extras.
"""

from __future__ import annotations

from typing import Final

from ..plugins import Backend, Parts, load_backend
from .base import (
    DEAD_SUFFIX,
    DEFAULT_MAX_DELIVERIES,
    ERROR_HEADER,
    Broker,
    Delivery,
    Event,
    Handler,
    Redelivery,
    Subscription,
    envelope,
)

__all__ = [
    "BACKENDS",
    "DEAD_SUFFIX",
    "DEFAULT_MAX_DELIVERIES",
    "DEFAULT_URL",
    "ERROR_HEADER",
    "Broker",
    "Delivery",
    "Event",
    "Handler",
    "Redelivery",
    "Subscription",
    "envelope",
    "from_url",
]

DEFAULT_URL: Final = "http://"
"""The embedded broker: no server, subscribers receive in their own apps."""

BACKENDS: dict[str, Backend] = {
    "http": Backend("asgi_micro.broker.http:HTTPBroker"),
    "memory": Backend("asgi_micro.broker.memory:MemoryBroker"),
}


def from_url(url: str, *, parts: Parts | None = None) -> Broker:
    """The broker that ``url`` names, e.g. ``memory://`` or ``nats://127.0.0.1:4222``.

    Nothing connects until ``start()``.
    """
    broker: Broker = load_backend("broker", url, BACKENDS, parts=parts)
    return broker
