"""Client wrappers: Go Micro's ``CallWrapper``, around every outgoing call.

    async def timed(call: ClientCall, next: ClientNext) -> Any:
        started = time.perf_counter()
        try:
            return await next(call)
        finally:
            logger.info("%s %s took %.3fs", call.service, call.endpoint,
                        time.perf_counter() - started)

    service.client.wrap(timed)

A client wrapper sees every ``call``, ``stream`` and ``service.http()`` request of its client
once (retries to other nodes happen inside ``next``), with the target service, the endpoint
(``Greeter.Hello``, or ``GET /items/1`` for an HTTP request), the protocol, the request and the
outgoing context, whose metadata and trace it may change before calling ``next`` (the headers
of every attempt are read from it). ``await next(call)`` returns the reply; for a stream, an
async iterator of replies once the first has come (wrap it to see the rest); for an HTTP
request, the ``httpx.Response``. A wrapper short-circuits by raising a ``MicroError`` or by
returning without calling ``next``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

from ..context import Context
from ..pipeline import BaseCall

__all__ = ["ClientCall", "ClientNext", "ClientWrapper"]


class ClientCall(BaseCall):
    """One outgoing call: ``protocol`` is ``http``, ``grpc`` or ``event``; ``kind`` is
    ``unary``, ``server``, ``client`` or ``bidi`` (``http`` for a request through
    ``service.http()``, ``publish`` for an event, whose ``service`` and ``endpoint`` are the
    topic);
    ``address`` is set when the caller named the node; ``state`` is for wrappers."""

    __slots__ = ("address", "service")

    def __init__(
        self,
        service: str,
        endpoint: str,
        protocol: Literal["http", "grpc", "event"],
        context: Context,
        *,
        request: Any = None,
        kind: str = "unary",
        address: str | None = None,
    ) -> None:
        super().__init__(endpoint, protocol, context, request, kind)
        self.service = service
        self.address = address


ClientNext = Callable[[ClientCall], Awaitable[Any]]
"""The rest of the client's pipeline: ``await next(call)``."""
ClientWrapper = Callable[[ClientCall, ClientNext], Awaitable[Any]]
"""A client wrapper: ``async def wrapper(call: ClientCall, next: ClientNext) -> Any``."""
