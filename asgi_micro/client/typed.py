"""Typed clients: one class per service, one method per RPC endpoint, checked by mypy.

    asgi-micro client greeter -o greeter_client.py                     # from the registry
    asgi-micro client example_apps/greeter/app.py -o greeter_client.py  # from the app

    from greeter_client import GreeterClient, GreetingsRequest, HelloRequest

    greeter = service.client.typed(GreeterClient)
    reply = await greeter.hello(HelloRequest(name="Ada"))       # a HelloResponse
    async for reply in greeter.greetings(GreetingsRequest(name="Ada")): ...

A generated module (``asgi_micro.client.codegen``) holds pydantic models of the endpoints'
messages and a ``TypedClient`` subclass whose methods call through ``Client.call`` and
``Client.stream`` with ``response_model=``, so replies are validated into those models and
calls keep the client's selection, retries, policies and deadlines.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

if TYPE_CHECKING:
    from . import Client

__all__ = ["TypedClient", "typed"]

T = TypeVar("T")
C = TypeVar("C", bound="TypedClient")
Transport = Literal["http", "grpc"]


class TypedClient:
    """The base of a generated client: calls ``service`` through ``client`` (selection,
    retries, policies and deadlines as for any call), on ``transport``, at ``version`` when
    one is given."""

    service: ClassVar[str]

    def __init__(
        self, client: Client, *, transport: Transport = "http", version: str | None = None
    ) -> None:
        self.client = client
        self.transport: Transport = transport
        self.version = version

    async def _call(
        self,
        endpoint: str,
        request: Any,
        response_model: type[T],
        timeout: float | None,
        metadata: Mapping[str, str] | None,
    ) -> T:
        """The reply of a unary endpoint, validated into ``response_model``."""
        return await self.client.call(
            self.service,
            endpoint,
            request,
            response_model=response_model,
            timeout=timeout,
            metadata=metadata,
            version=self.version,
            transport=self.transport,
        )

    async def _send(
        self, endpoint: str, request: Any, timeout: float | None, metadata: Mapping[str, str] | None
    ) -> None:
        """Call a unary endpoint that replies with nothing (``{}`` on the wire)."""
        await self._call(endpoint, request, dict, timeout, metadata)

    def _stream(
        self,
        endpoint: str,
        request: Any,
        response_model: type[T],
        timeout: float | None,
        metadata: Mapping[str, str] | None,
        *,
        streams_requests: bool = False,
    ) -> AsyncGenerator[T, None]:
        """The replies of a streaming endpoint; one that takes a stream of requests is called
        over gRPC whatever the transport, since over HTTP it is a WebSocket."""
        return self.client.stream(
            self.service,
            endpoint,
            request,
            response_model=response_model,
            timeout=timeout,
            metadata=metadata,
            version=self.version,
            transport="grpc" if streams_requests else self.transport,
        )

    async def _call_streaming(
        self,
        endpoint: str,
        requests: Any,
        response_model: type[T],
        timeout: float | None,
        metadata: Mapping[str, str] | None,
    ) -> T:
        """The one reply of a client-streaming endpoint to a stream of requests."""
        replies = self._stream(
            endpoint, requests, response_model, timeout, metadata, streams_requests=True
        )
        async with contextlib.aclosing(replies):
            async for reply in replies:
                return reply
        raise RuntimeError(f"{self.service} {endpoint} ended its stream without a reply")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.service!r}, transport={self.transport!r})"


def typed(
    client: Client, cls: type[C], *, transport: Transport = "http", version: str | None = None
) -> C:
    """An instance of the generated client ``cls`` that calls through ``client`` (what
    ``Client.typed`` returns)."""
    if not (isinstance(cls, type) and issubclass(cls, TypedClient)):
        raise TypeError(
            f"{cls!r} is not a generated client: generate one with `asgi-micro client SERVICE`"
        )
    return cls(client, transport=transport, version=version)
