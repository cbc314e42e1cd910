"""What the dashboard asks the nodes themselves: health and stats (``/_micro/health``,
``/_micro/stats``) and the topics they publish and subscribe to (``/_micro/asyncapi.json``).

Every question has a short timeout and a node that does not answer is shown as such: a page
lists what is known now rather than waits for the slowest node. With auth on, a node's rules
decide whether it shows its stats to an anonymous caller (``GET /_micro/stats``); health and
the AsyncAPI document are open.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from ..client.http import HTTPTransport
from ..errors import MicroError
from ..registry import Node
from ..registry import Service as ServiceRecord

__all__ = ["NodeView", "Topic", "look_at", "topics_of"]

PROBE_TIMEOUT: Final = 2.0
NODES_ASKED: Final = 3
"""Nodes of one version asked for its AsyncAPI document before giving up: they run one code."""


@dataclass(slots=True)
class NodeView:
    """A node as the dashboard shows it: its record, and what it said of itself."""

    node: Node
    version: str
    health: str = "unknown"
    stats: dict[str, Any] | None = None
    stats_refused: str = ""
    """Why there are no stats (``HTTP 401`` from a node with auth on, ``unreachable``)."""


@dataclass(frozen=True, slots=True)
class Topic:
    """One topic a service version publishes to or subscribes to."""

    topic: str
    action: str  # "publishes" or "subscribes"
    service: str
    version: str
    queue: str = ""
    messages: tuple[str, ...] = field(default=())


async def look_at(transport: HTTPTransport, records: Iterable[ServiceRecord]) -> list[NodeView]:
    """Every node of ``records`` with its health and stats, asked all at once."""
    views = [NodeView(node, record.version) for record in records for node in record.nodes]
    await asyncio.gather(*(_probe(transport, view) for view in views))
    return views


async def _probe(transport: HTTPTransport, view: NodeView) -> None:
    status, health = await _get_json(transport, view.node, "/_micro/health")
    if isinstance(health, dict) and "status" in health:
        view.health = str(health["status"])
    else:
        view.health = "unreachable" if status == 0 else f"HTTP {status}"
        return  # a node that does not answer its health will not answer for its stats
    status, stats = await _get_json(transport, view.node, "/_micro/stats")
    if status == 200 and isinstance(stats, dict):
        view.stats = stats
    else:
        view.stats_refused = "unreachable" if status == 0 else f"HTTP {status}"


async def topics_of(transport: HTTPTransport, records: Iterable[ServiceRecord]) -> list[Topic]:
    """What each version of a service publishes and subscribes to, from its AsyncAPI document
    (asked of its first nodes until one answers); a version no node answers for has none."""
    found: list[Topic] = []
    for record in records:
        for node in record.nodes[:NODES_ASKED]:
            status, document = await _get_json(transport, node, "/_micro/asyncapi.json")
            if status == 200 and isinstance(document, dict):
                found.extend(_topics(document, record.name, record.version))
                break
    return found


def _topics(document: dict[str, Any], service: str, version: str) -> list[Topic]:
    channels = document.get("channels") or {}
    topics = []
    for operation in (document.get("operations") or {}).values():
        if not isinstance(operation, dict) or operation.get("action") not in ("send", "receive"):
            continue
        key = str((operation.get("channel") or {}).get("$ref", "")).rpartition("/")[2]
        channel = channels.get(key) or {}
        messages = tuple(
            str(message.get("$ref", "")).rpartition("/")[2]
            for message in operation.get("messages") or ()
            if isinstance(message, dict)
        )
        topics.append(
            Topic(
                topic=str(channel.get("address") or key),
                action="publishes" if operation["action"] == "send" else "subscribes",
                service=service,
                version=version,
                queue=str(operation.get("x-micro-queue") or ""),
                messages=messages,
            )
        )
    return topics


async def _get_json(transport: HTTPTransport, node: Node, path: str) -> tuple[int, Any]:
    """``GET path`` of ``node``: its status and decoded body, ``(0, None)`` when unreachable."""
    try:
        response = await transport.request(node.host, node.port, "GET", path, timeout=PROBE_TIMEOUT)
    except (MicroError, ValueError):
        return 0, None
    try:
        return response.status, orjson.loads(response.body)
    except orjson.JSONDecodeError:
        return response.status, None
