"""The AsyncAPI 3.0 document of a service's events: the topics it publishes and subscribes to.

    GET /_micro/asyncapi.json                       # served by every service
    asgi-micro asyncapi example_apps/greeter/app.py # printed from the code

What ``asyncapi(service)`` describes, and where it comes from:

- ``info``: the service's name and version.
- ``servers``: the broker, from its URL without credentials or query (``nats://user:pw@h:4222``
  is host ``h:4222``, protocol ``nats``); a URL naming several hosts is one server each. The
  embedded ``http://`` broker has no server: its host is each subscribing node (``{node}``).
- ``channels``: one per topic, its ``address`` the topic, with the messages that travel on it:
  the JSON schema of the message type as ``payload``, the CloudEvents envelope as ``headers``
  (``components.schemas.MicroEventHeaders``, with ``ce-type`` the topic).
- ``operations``: ``send`` for each topic declared with ``service.publishes``, ``receive`` for
  each ``@service.subscribe`` handler (its queue group as ``x-micro-queue``; a broadcast
  subscriber has none), and ``send`` to ``<topic>.dead`` for the dead letters a subscriber
  publishes. A queue group is the broker's own thing (a JetStream durable consumer, a Redis
  consumer group, a RabbitMQ queue), so it is no protocol binding: the NATS binding's ``queue``
  would tell a client to join a core NATS queue group, which JetStream does not deliver to.
- ``components.schemas``: the models the payloads refer to, each once, as FastAPI's OpenAPI
  lifts shared ``$defs``; a published type is described as it is serialised, a subscribed one
  as it is validated (pydantic names them ``Model-Output``/``Model-Input`` where they differ).

Schemas are JSON Schema as pydantic writes it; the one keyword AsyncAPI reads otherwise is
``discriminator``, which AsyncAPI takes as the property name and pydantic writes as OpenAPI's
object, so it is rewritten to that name.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol
from urllib.parse import urlsplit

from google.protobuf.message import Message as ProtobufMessage
from pydantic import TypeAdapter

from .broker.base import DEAD_SUFFIX, DELIVERIES_HEADER, ERROR_HEADER, SPEC_VERSION
from .broker.inbox import INBOX_PREFIX
from .openapi import ERROR_SCHEMA, ERROR_SCHEMA_NAME

if TYPE_CHECKING:
    from .broker import Broker
    from .events import Events
    from .messages import MessageType

__all__ = [
    "ASYNCAPI_VERSION",
    "DEAD_LETTER_HEADERS",
    "EVENT_HEADERS",
    "Described",
    "asyncapi",
    "servers_of",
]

logger = logging.getLogger(__name__)

ASYNCAPI_VERSION: Final = "3.0.0"
EVENT_HEADERS: Final = "MicroEventHeaders"
DEAD_LETTER_HEADERS: Final = "MicroDeadLetterHeaders"

_SCHEMAS = "#/components/schemas/"
_CONTENT_TYPE = "application/json"
# AsyncAPI's names for the protocols of the schemes a broker URL may have.
_PROTOCOLS = {"tls": "nats", "rediss": "redis"}
_KEY = re.compile(r"[^\w.\-]")


class Described(Protocol):
    """What the document is made of: a service's name, version, broker and events."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def broker(self) -> Broker: ...

    @property
    def events(self) -> Events: ...


@dataclass(slots=True)
class _Operation:
    action: Literal["send", "receive"]
    topic: str
    message: MessageType | None
    extra: dict[str, Any]
    dead_letters_of: str | None = None


def asyncapi(service: Described) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of ``service``'s published and subscribed topics."""
    operations = list(_operations(service))
    servers = servers_of(service.broker.url)
    payloads, schemas = _payloads(operations)
    if operations:
        schemas[EVENT_HEADERS] = _event_headers()
    if any(operation.dead_letters_of for operation in operations):
        schemas[DEAD_LETTER_HEADERS] = _dead_letter_headers()
        schemas.setdefault(ERROR_SCHEMA_NAME, dict(ERROR_SCHEMA))

    channels: dict[str, dict[str, Any]] = {}
    described: dict[str, dict[str, Any]] = {}
    for index, operation in enumerate(operations):
        channel = channels.setdefault(operation.topic, {"address": operation.topic, "messages": {}})
        message = _message(operation, payloads.get(index))
        name = _message_name(channel["messages"], message)
        channel["messages"][name] = message
        entry: dict[str, Any] = {
            "action": operation.action,
            "channel": {"$ref": f"#/channels/{operation.topic}"},
            "messages": [{"$ref": f"#/channels/{operation.topic}/messages/{name}"}],
            **operation.extra,
        }
        key = _unique(_operation_key(operation, entry.get("x-micro-queue")), described)
        described[key] = entry

    document: dict[str, Any] = {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {"title": service.name, "version": service.version},
        "defaultContentType": _CONTENT_TYPE,
    }
    if servers:
        document["servers"] = servers
    document["channels"] = channels
    document["operations"] = described
    document["components"] = {"schemas": _asyncapi_keywords(schemas)}
    return document


def servers_of(url: str) -> dict[str, dict[str, Any]]:
    """The AsyncAPI servers of a broker URL, without its credentials and query (which may hold
    a password): one per host it names."""
    if not url:
        return {}
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    netloc = parts.netloc.rpartition("@")[2]
    protocol = _PROTOCOLS.get(scheme, scheme)
    if scheme == "memory":
        hub = netloc + parts.path
        where = f"hub {hub!r}" if hub else "the default hub"
        return {
            "broker": {
                "host": "localhost",
                "protocol": protocol,
                "description": f"In the process ({where}): only services in it receive.",
            }
        }
    if scheme == "http" and not netloc:
        return {
            "broker": {
                "host": "{node}",
                "pathname": INBOX_PREFIX.rstrip("/"),
                "protocol": protocol,
                "description": "The embedded broker, without a server: a publisher delivers "
                f"each event to a subscribing node, as POST {INBOX_PREFIX}<topic>.",
                "variables": {
                    "node": {"description": "A subscribing node's host:port, from the registry."}
                },
            }
        }
    hosts = [host for host in netloc.split(",") if host] or ["localhost"]
    servers: dict[str, dict[str, Any]] = {}
    for number, host in enumerate(hosts, start=1):
        server: dict[str, Any] = {"host": host, "protocol": protocol}
        if parts.path not in ("", "/"):
            server["pathname"] = parts.path
        servers["broker" if len(hosts) == 1 else f"broker-{number}"] = server
    return servers


def _operations(service: Described) -> Iterator[_Operation]:
    events = service.events
    for publication in events.published.values():
        about = {"description": publication.description} if publication.description else {}
        yield _Operation("send", publication.topic, publication.message, about)
    for subscriber in events.subscribers:
        handler = subscriber.rpc.handler
        extra: dict[str, Any] = {"summary": f"{handler.__module__}.{handler.__qualname__}"}
        doc = inspect.getdoc(handler)
        if doc:
            extra["description"] = doc
        if subscriber.queue is not None:
            extra["x-micro-queue"] = subscriber.queue
        extra["x-micro-max-deliveries"] = subscriber.max_deliveries
        yield _Operation("receive", subscriber.topic, subscriber.rpc.request, extra)
    for topic in dict.fromkeys(subscriber.topic for subscriber in events.subscribers):
        why = {
            "description": f"Events on {topic} that could not be handled: after their last "
            "delivery (x-micro-max-deliveries), or at once when they do not decode or arrive "
            "after their deadline. Each keeps its envelope and body as published; "
            f"{ERROR_HEADER} says why it was given up."
        }
        yield _Operation("send", topic + DEAD_SUFFIX, None, why, dead_letters_of=topic)


def _payloads(
    operations: list[_Operation],
) -> tuple[dict[int, dict[str, Any]], dict[str, Any]]:
    """The payload schema of each operation's message (by index; none for an operation without
    one) and the schemas they refer to, shared."""
    payloads: dict[int, dict[str, Any]] = {}
    schemas: dict[str, Any] = {}
    adapted: list[_Adapted] = []
    for index, operation in enumerate(operations):
        message = operation.message
        if message is None:
            continue
        if isinstance(message.type, type) and issubclass(message.type, ProtobufMessage):
            schema = message.json_schema()  # pydantic cannot describe a generated class
            name = _KEY.sub("_", str(schema.get("title") or message.type.__name__))
            schemas.setdefault(name, schema)
            payloads[index] = {"$ref": _SCHEMAS + name}
            continue
        mode: _Mode = "serialization" if operation.action == "send" else "validation"
        adapted.append((index, mode, TypeAdapter(message.type)))
    try:
        found = [_json_schemas(adapted)]
    except Exception:
        # A type pydantic cannot describe: the others are described, each on its own.
        found = []
        for one in adapted:
            try:
                found.append(_json_schemas([one]))
            except Exception:
                logger.warning("no JSON schema for %r: described without one", one[2])
    for described, definitions in found:
        for (index, _), schema in described.items():
            payloads[index] = _asyncapi_keywords(schema)
        for name, schema in definitions.items():
            schemas.setdefault(name, schema)
    return payloads, schemas


_Mode = Literal["validation", "serialization"]
_Adapted = tuple[int, _Mode, TypeAdapter[Any]]


def _json_schemas(
    adapted: list[_Adapted],
) -> tuple[dict[tuple[int, _Mode], dict[str, Any]], dict[str, Any]]:
    described, definitions = TypeAdapter.json_schemas(adapted, ref_template=_SCHEMAS + "{model}")
    return dict(described), dict(definitions.get("$defs", {}))


def _message(operation: _Operation, payload: dict[str, Any] | None) -> dict[str, Any]:
    topic = operation.dead_letters_of or operation.topic
    headers = DEAD_LETTER_HEADERS if operation.dead_letters_of else EVENT_HEADERS
    message: dict[str, Any] = {
        "contentType": _CONTENT_TYPE,
        "headers": {
            "allOf": [
                {"$ref": _SCHEMAS + headers},
                {"type": "object", "properties": {"ce-type": {"const": topic}}},
            ]
        },
    }
    if operation.dead_letters_of:
        message["name"] = "DeadLetter"
        message["description"] = f"An event of {topic}, as it was published."
    elif payload is not None:
        message["name"] = _payload_name(payload)
        message["payload"] = payload
    else:
        message["name"] = "Event"
        message["description"] = "The handler takes no message: any body."
    return message


def _payload_name(payload: dict[str, Any]) -> str:
    ref = payload.get("$ref")
    if isinstance(ref, str) and ref.startswith(_SCHEMAS):
        return ref[len(_SCHEMAS) :]
    return _KEY.sub("_", str(payload.get("title") or payload.get("type") or "Message"))


def _message_name(messages: dict[str, Any], message: dict[str, Any]) -> str:
    """The key of ``message`` in its channel: its name, shared with an equal message."""
    name = str(message["name"])
    key, number = name, 1
    while key in messages and messages[key] != message:
        number += 1
        key = f"{name}_{number}"
    return key


def _operation_key(operation: _Operation, queue: str | None) -> str:
    key = f"{operation.action}.{operation.topic}"
    return _KEY.sub("_", f"{key}.{queue}" if queue is not None else key)


def _unique(key: str, taken: dict[str, Any]) -> str:
    found, number = key, 1
    while found in taken:
        number += 1
        found = f"{key}_{number}"
    return found


def _asyncapi_keywords(node: Any) -> Any:
    """``node`` with each OpenAPI ``discriminator`` object as the property name it holds,
    as AsyncAPI's Schema Object takes it."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "discriminator" and isinstance(value, dict) and "propertyName" in value:
                out[key] = value["propertyName"]
            else:
                out[key] = _asyncapi_keywords(value)
        return out
    if isinstance(node, list):
        return [_asyncapi_keywords(item) for item in node]
    return node


def _event_headers() -> dict[str, Any]:
    return {
        "title": EVENT_HEADERS,
        "description": (
            "The headers of every event: its CloudEvents 1.0 attributes in binary mode (ce-*, "
            "and content-type for datacontenttype), metadata as micro-* headers, the W3C trace "
            "context. A broker whose protocol binding spells the attributes otherwise maps them "
            "on the wire (AMQP: cloudEvents:id)."
        ),
        "type": "object",
        "properties": {
            "ce-id": {
                "type": "string",
                "description": "The event's id, which publish returns; a redelivery keeps it.",
            },
            "ce-source": {
                "type": "string",
                "description": "The name of the service that published it.",
            },
            "ce-type": {"type": "string", "description": "The topic it was published on."},
            "ce-specversion": {"type": "string", "const": SPEC_VERSION},
            "ce-time": {
                "type": "string",
                "format": "date-time",
                "description": "When it was published (RFC 3339, UTC).",
            },
            "content-type": {
                "type": "string",
                "description": "The media type of the body: application/json (the default), "
                "application/msgpack or application/protobuf; subscribers decode each.",
            },
            "traceparent": {"type": "string", "description": "W3C trace context."},
            "tracestate": {"type": "string", "description": "W3C trace context."},
            "micro-deadline": {
                "type": "string",
                "pattern": "^[0-9]+$",
                "description": "When handling it stops being useful, in Unix milliseconds: the "
                "handler runs within it, and an event that arrives after it is dead-lettered.",
            },
        },
        "patternProperties": {
            "^micro-": {
                "type": "string",
                "description": "Metadata, micro-<key>: what a call carries as Micro-<Key>.",
            }
        },
        "required": ["ce-id", "ce-source", "ce-type", "ce-specversion", "ce-time", "content-type"],
    }


def _dead_letter_headers() -> dict[str, Any]:
    return {
        "title": DEAD_LETTER_HEADERS,
        "description": "The headers of a dead letter: the event's own, and why it was given up.",
        "allOf": [
            {"$ref": _SCHEMAS + EVENT_HEADERS},
            {
                "type": "object",
                "properties": {
                    ERROR_HEADER: {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": {"$ref": _SCHEMAS + ERROR_SCHEMA_NAME},
                        "description": "The last error, in the error shape, as JSON.",
                    },
                    DELIVERIES_HEADER: {
                        "type": "string",
                        "pattern": "^[0-9]+$",
                        "description": "How many times it was delivered.",
                    },
                },
                "required": [ERROR_HEADER, DELIVERIES_HEADER],
            },
        ],
    }
