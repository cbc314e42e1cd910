"""The registry interface: where services announce their nodes and find each other."""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ..plugins import Pluggable

__all__ = ["Endpoint", "Event", "EventType", "Node", "Registry", "Service"]


@dataclass(slots=True)
class Endpoint:
    """One callable thing a service offers: an RPC method or an HTTP route.

    ``request`` and ``response`` are JSON schemas; ``metadata`` holds how to reach it
    (``method``, ``path``, ``kind`` of ``rpc`` or ``http``, ``stream``, ``idempotent``) and,
    for an RPC, its ``description`` (the handler's docstring).
    """

    name: str
    request: dict[str, Any] | None = None
    response: dict[str, Any] | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Node:
    """One running instance of a service, reachable at ``address`` (``host:port``)."""

    id: str
    address: str
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return self.address.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])


@dataclass(slots=True)
class Service:
    """A service at one version, with the nodes that run it."""

    name: str
    version: str = "latest"
    metadata: dict[str, str] = field(default_factory=dict)
    endpoints: list[Endpoint] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Service:
        return cls(
            name=str(data["name"]),
            version=str(data.get("version") or "latest"),
            metadata={str(k): str(v) for k, v in (data.get("metadata") or {}).items()},
            endpoints=[
                Endpoint(
                    name=str(e["name"]),
                    request=e.get("request"),
                    response=e.get("response"),
                    metadata={str(k): str(v) for k, v in (e.get("metadata") or {}).items()},
                )
                for e in data.get("endpoints") or []
            ],
            nodes=[
                Node(
                    id=str(n["id"]),
                    address=str(n["address"]),
                    metadata={str(k): str(v) for k, v in (n.get("metadata") or {}).items()},
                )
                for n in data.get("nodes") or []
            ],
        )


class EventType(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Event:
    """A change seen by ``Registry.watch``; ``service.nodes`` holds the nodes it concerns."""

    type: EventType
    service: Service


class Registry(Pluggable):
    """Service discovery.

    ``register`` announces the nodes of a service for ``ttl`` seconds: a node that is not
    registered again within its TTL disappears from lookups (the service heartbeats by calling
    ``register`` on an interval). ``get_service`` returns one record per version of the
    service, each with its live nodes, or an empty list. Lifecycle is explicit and idempotent:
    ``start``/``stop`` or ``async with registry:``; nothing starts in ``__init__``.
    """

    async def start(self) -> None:
        """Open connections; called again it does nothing."""

    async def stop(self) -> None:
        """Close connections; called again it does nothing."""

    def lookup_advice(self) -> str:
        """What to check when a lookup finds nothing, for the client's error message; ``""``
        when nothing is worth saying."""
        return ""

    @abstractmethod
    async def register(self, service: Service, *, ttl: float | None = None) -> None:
        """Announce ``service.nodes``; ``ttl`` of ``None`` means until deregistered."""

    @abstractmethod
    async def deregister(self, service: Service) -> None:
        """Withdraw ``service.nodes`` at once."""

    @abstractmethod
    async def get_service(self, name: str) -> list[Service]:
        """Every version of ``name`` with its live nodes; ``[]`` when there is none."""

    @abstractmethod
    async def list_services(self) -> list[Service]:
        """Every known service and version; endpoints may be left out."""

    @abstractmethod
    def watch(self, service: str | None = None) -> AsyncGenerator[Event, None]:
        """Changes from now on, for one service or all; close the iterator to stop watching.

        The subscription is in place once the iterator has first been advanced (before its
        first event), so a caller can watch first and then look up without missing a change.
        """
