"""``httpx.AsyncClient`` over the pooled transport.

    client = httpx.AsyncClient(transport=PooledTransport())

httpx's own transport (httpcore) costs a core of CPU for a few hundred requests a second under
concurrency; this one keeps httpx's API and sends through :class:`HTTPTransport`. Responses
stream, httpx's timeouts apply (``pool``, ``connect``, and ``read`` for each wait for data; a
write never waits, the request goes out in one buffered write) and errors come out as httpx's
own exception types. Plain ``http://`` only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from asgi_micro import errors
from asgi_micro.client.http import HTTPTransport, StreamingResponse

__all__ = ["PooledTransport", "httpx_error"]

_EXTENSIONS = {"http_version": b"HTTP/1.1"}


class PooledTransport(httpx.AsyncBaseTransport):
    """Serves ``httpx.Request`` through an :class:`HTTPTransport` (a new one unless given; only
    one it created is closed with it)."""

    def __init__(self, transport: HTTPTransport | None = None) -> None:
        self.transport = HTTPTransport() if transport is None else transport
        self._owns_transport = transport is None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http":
            raise httpx.UnsupportedProtocol(
                f"cannot send {url.scheme!r} URLs: this transport speaks plain HTTP/1.1",
                request=request,
            )
        return await self.send(request, url.host, url.port or 80)

    async def send(self, request: httpx.Request, host: str, port: int) -> httpx.Response:
        """Send ``request`` to ``host:port``, whatever its URL names (so a layer above can
        resolve names); the Host header stays the request's."""
        try:
            return await self.open(request, host, port)
        except errors.MicroError as exc:
            raise httpx_error(exc, request) from exc

    async def open(
        self, request: httpx.Request, host: str, port: int, *, timeout: float | None = None
    ) -> httpx.Response:
        """As ``send``, raising asgi-micro's errors (for a layer that retries on them);
        ``timeout`` bounds the whole exchange up to the response headers."""
        timeouts = request.extensions.get("timeout", {})
        body = await request.aread()
        response = await self.transport.open_stream(
            host,
            port,
            request.method,
            request.url.raw_path.decode("ascii"),
            headers=request.headers.raw,
            body=body,
            timeout=timeout,
            read_timeout=timeouts.get("read"),
            connect_timeout=timeouts.get("connect"),
            pool_timeout=timeouts.get("pool"),
        )
        return httpx.Response(
            response.status,
            headers=response.headers,
            stream=_ResponseStream(response, request),
            extensions=_EXTENSIONS,
        )

    async def aclose(self) -> None:
        if self._owns_transport:
            await self.transport.aclose()


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, response: StreamingResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response:
                yield chunk
        except errors.MicroError as exc:
            raise httpx_error(exc, self._request) from exc

    async def aclose(self) -> None:
        await self._response.aclose()


def httpx_error(error: errors.MicroError, request: httpx.Request) -> httpx.TransportError:
    """The httpx exception a user of ``httpx.AsyncClient`` expects for one of ours."""
    cause = error.__cause__
    kind: type[httpx.TransportError]
    if isinstance(error, errors.ConnectionFailed):
        kind = httpx.ConnectTimeout if isinstance(cause, TimeoutError) else httpx.ConnectError
    elif isinstance(error, errors.ServiceUnavailable):
        kind = httpx.ConnectError  # no node to connect to
    elif isinstance(error, errors.Timeout):
        # Waits for a free connection end in asyncio's TimeoutError; reads in our own timer.
        kind = httpx.PoolTimeout if isinstance(cause, TimeoutError) else httpx.ReadTimeout
    elif isinstance(error, errors.ConnectionLost) and isinstance(cause, OSError):
        kind = httpx.ReadError
    elif isinstance(error, errors.BadRequest):
        kind = httpx.LocalProtocolError
    else:
        # The server closed early or sent something that is not HTTP/1.1.
        kind = httpx.RemoteProtocolError
    return kind(error.detail, request=request)
