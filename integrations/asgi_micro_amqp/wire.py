"""An event as an AMQP message, in the CloudEvents AMQP binding (binary mode).

The attributes travel as application properties named ``cloudEvents:<attribute>`` (the
binding's prefix; ``cloudEvents_`` is read too), ``datacontenttype`` as the message's
``content-type`` property, and the event's id as ``message-id`` as well; everything else in
the headers (``micro-*`` metadata, ``traceparent``) travels under its own name::

    Event.headers                  AMQP message
    ce-id: 7f3a...                 message_id: 7f3a...   cloudEvents:id: 7f3a...
    ce-source: orders              cloudEvents:source: orders
    content-type: application/json content_type: application/json
    micro-tenant: acme             micro-tenant: acme

Two application properties are this backend's own and never reach ``Event.headers``:
``asgi-micro-delivery`` (which delivery a republished copy's first one is) and
``asgi-micro-delay`` (which delay queue a copy waits in). RabbitMQ's own (``x-death``,
``x-delivery-count``...) are read for the count and dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, FieldValue

from asgi_micro.broker import Event

__all__ = ["DELAY_HEADER", "DELIVERY_HEADER", "event_of", "message_of"]

CE_PREFIX: Final = "cloudEvents:"
CE_PREFIXES: Final = (CE_PREFIX, "cloudEvents_")
DELIVERY_HEADER: Final = "asgi-micro-delivery"
DELAY_HEADER: Final = "asgi-micro-delay"
"""Matched by the delay exchange (a headers exchange ignores ``x-`` names, so it is not one)."""
_DROPPED: Final = frozenset(
    {
        DELIVERY_HEADER,
        DELAY_HEADER,
        "x-death",
        "x-delivery-count",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
    }
)


def message_of(
    headers: Mapping[str, str],
    body: bytes,
    *,
    delivery: int = 1,
    delay_ms: int = 0,
) -> aio_pika.Message:
    """The persistent AMQP message of an event; a republished copy says which ``delivery`` it
    is and, when it waits in a delay queue, the queue's ``delay_ms``."""
    properties: dict[str, FieldValue] = {}
    for name, value in headers.items():
        if name.startswith("ce-"):
            properties[CE_PREFIX + name[3:]] = value
        elif name != "content-type":
            properties[name] = value
    if delivery > 1:
        properties[DELIVERY_HEADER] = delivery
    if delay_ms:
        properties[DELAY_HEADER] = str(delay_ms)
    return aio_pika.Message(
        body,
        headers=properties,
        content_type=headers.get("content-type"),
        message_id=headers.get("ce-id"),
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


def event_of(message: AbstractIncomingMessage, topic: str) -> Event:
    """The event a delivered message carries, with which delivery of it this is: the copy's
    own count, plus the returns RabbitMQ counted since (a quorum queue's ``x-delivery-count``;
    a classic queue says only whether it delivered the message before)."""
    properties = message.headers or {}
    headers: dict[str, str] = {}
    for name, value in properties.items():
        if name in _DROPPED:
            continue
        if name.startswith(CE_PREFIXES):
            name = "ce-" + name[len(CE_PREFIX) :]
        headers[name] = _text(value)
    if message.content_type:
        headers["content-type"] = message.content_type
    if "ce-id" not in headers and message.message_id:
        headers["ce-id"] = message.message_id
    returned = properties.get("x-delivery-count")
    deliveries = _count(properties.get(DELIVERY_HEADER)) + (
        _count(returned, 0) if returned is not None else int(bool(message.redelivered))
    )
    return Event(topic, headers.get("ce-id", ""), headers, message.body, deliveries)


def _text(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode(errors="replace")
    return value if isinstance(value, str) else str(value)


def _count(value: object, default: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str | bytes):
        return default
    try:
        return max(int(value), 0)
    except ValueError:
        return default
