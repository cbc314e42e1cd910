"""Calling services by name: ``await service.client.call("greeter", "Greeter.Hello", {...})``.

The client resolves the service through the registry, picks a node, encodes the request by
content type, sends the context (metadata, trace, the time left) along, and decodes the reply
or raises the error the server sent, as the same class of ``asgi_micro.errors``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, TypeVar, overload

import orjson

from ..codec import codec_for_content_type, message_type
from ..context import Context, current_context
from ..errors import BadGateway, MicroError, ServiceUnavailable, Timeout
from ..registry import Node, Registry
from ..registry import Service as ServiceRecord
from .http import HTTPTransport

__all__ = ["Client"]

T = TypeVar("T")

CLIENT_ID = "asgi_micro.client"


class Client:
    def __init__(
        self,
        *,
        registry: Registry,
        caller: str | None = None,
        transport: HTTPTransport | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.registry = registry
        self.caller = caller
        self.timeout = timeout
        self.transport = transport or HTTPTransport()
        self._owns_transport = transport is None
        self._by_address: dict[str, ServiceRecord] = {}

    @overload
    async def call(
        self,
        service: str,
        endpoint: str,
        request: Any = None,
        *,
        response_model: type[T],
        timeout: float | None = None,
        metadata: Mapping[str, str] | None = None,
        address: str | None = None,
        content_type: str = "application/json",
    ) -> T: ...

    @overload
    async def call(
        self,
        service: str,
        endpoint: str,
        request: Any = None,
        *,
        response_model: None = None,
        timeout: float | None = None,
        metadata: Mapping[str, str] | None = None,
        address: str | None = None,
        content_type: str = "application/json",
    ) -> Any: ...

    async def call(
        self,
        service: str,
        endpoint: str,
        request: Any = None,
        *,
        response_model: type[Any] | None = None,
        timeout: float | None = None,
        metadata: Mapping[str, str] | None = None,
        address: str | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """Call ``endpoint`` (``"Greeter.Hello"``) of ``service`` and return the reply.

        ``request`` is a pydantic model, a dict or ``None``. The reply is a ``response_model``
        instance when one is given, else the decoded value (a dict for JSON). ``timeout``
        (default: the client's) is capped by the deadline of the request being handled, if any;
        ``address`` (``host:port``) skips the registry and calls that node.
        """
        context = (current_context() or Context()).onward(
            timeout=self.timeout if timeout is None else timeout, metadata=metadata
        )
        codec = codec_for_content_type(content_type)
        if codec is None:
            raise ValueError(f"no codec for content type {content_type!r}")
        reply_type = None if response_model is None else message_type(response_model)
        records = await self._lookup(service, address)
        node = _pick(service, records)
        method, path = _route(endpoint, records)
        headers = [
            ("content-type", codec.content_type),
            ("accept", codec.content_type),
            *context.headers(),
        ]
        if self.caller:
            headers.append(("micro-from-service", self.caller))
        remaining = context.remaining()
        if remaining is not None and remaining <= 0:
            raise Timeout(f"deadline exceeded before calling {service}", id=CLIENT_ID)
        body = codec.encode({} if request is None else request)
        response = await self.transport.request(
            node.host, node.port, method, path, headers=headers, body=body, timeout=remaining
        )
        if 200 <= response.status < 300:
            reply_codec = codec_for_content_type(
                (response.header(b"content-type") or b"").decode("latin-1")
            )
            if reply_codec is None:
                raise BadGateway(
                    f"{service} replied with an unsupported content type", id=CLIENT_ID
                )
            return reply_codec.decode(response.body, reply_type)
        raise _error_from(response.status, response.body, service)

    async def aclose(self) -> None:
        if self._owns_transport:
            await self.transport.aclose()

    async def _lookup(self, service: str, address: str | None) -> list[ServiceRecord]:
        if address is None:
            return await self.registry.get_service(service)
        record = self._by_address.get(address)
        if record is None:
            record = await self._describe_node(service, address)
            self._by_address[address] = record
        return [record]

    async def _describe_node(self, service: str, address: str) -> ServiceRecord:
        """A node's own record (endpoint paths included), asked of the node itself."""
        node = Node(id=address, address=address)
        try:
            response = await self.transport.request(
                node.host, node.port, "GET", "/_micro/registry", timeout=self.timeout
            )
            if response.status == 200:
                record = ServiceRecord.from_dict(orjson.loads(response.body))
                record.nodes = [node]
                return record
        except (MicroError, ValueError, KeyError):
            pass  # not an asgi-micro node, or an old one: call it by convention
        return ServiceRecord(name=service, nodes=[node])


def _pick(service: str, records: list[ServiceRecord]) -> Node:
    nodes = [node for record in records for node in record.nodes]
    if not nodes:
        raise ServiceUnavailable(f"service {service}: no nodes found", id=CLIENT_ID)
    return random.choice(nodes)


def _route(endpoint: str, records: list[ServiceRecord]) -> tuple[str, str]:
    """The HTTP method and path of ``endpoint``: from the registry, else by convention
    (``Greeter.GetItem`` is ``POST /greeter/get_item``)."""
    for record in records:
        for candidate in record.endpoints:
            if candidate.name == endpoint and "path" in candidate.metadata:
                return candidate.metadata.get("method", "POST"), candidate.metadata["path"]
    router, _, method = endpoint.rpartition(".")
    if not router or not method:
        raise ValueError(f"an endpoint is named '<Router>.<Method>', got {endpoint!r}")
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in method).lstrip("_")
    return "POST", f"/{router.lower()}/{snake}"


def _error_from(status: int, body: bytes, service: str) -> MicroError:
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = body.decode("utf-8", "replace") or f"{service} answered {status}"
    return MicroError.from_dict(data, status_code=status, id=service)
