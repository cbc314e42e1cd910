"""``service.http()``: an ``httpx.AsyncClient`` whose hosts are service names.

    async with service.http() as http:
        item = (await http.get("http://inventory/items/1")).json()

The transport resolves ``inventory`` through the client's registry cache and sends the request
to a node chosen like any call: same strategy, ejection, retries (GET, HEAD, OPTIONS, PUT and
DELETE are idempotent; any method is retried when nothing was sent) and deadline, with the
context's metadata and trace headers. A host with a port or an IP address is called directly,
as any HTTP client would call it: none of the context goes with the request.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

import httpx

from ..context import TIMEOUT_HEADER
from ..errors import MicroError
from ..naming import IDEMPOTENT_METHODS
from ..registry import Node
from .calls import ClientCall
from .httpx_transport import PooledTransport, httpx_error

if TYPE_CHECKING:
    from . import Client

__all__ = ["DiscoveryTransport"]


class DiscoveryTransport(httpx.AsyncBaseTransport):
    def __init__(self, client: Client) -> None:
        self.client = client
        # Shares the client's connection pool, which outlives any one httpx.AsyncClient.
        self._pooled = PooledTransport(client.transport)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http":
            raise httpx.UnsupportedProtocol(f"cannot send {url.scheme!r} URLs", request=request)
        timeouts = request.extensions.get("timeout", {})
        address = _direct_address(url)
        call = ClientCall(
            url.host,
            f"{request.method} {url.path}",
            "http",
            self.client._context(timeouts.get("read"), None, resolved=address is None),
            request=request,
            kind="http",
            address=address,
        )
        try:
            response: httpx.Response = await self.client._run(call, self._send)
        except MicroError as exc:
            raise httpx_error(exc, request) from exc
        return response

    async def _send(self, call: ClientCall) -> httpx.Response:
        request: httpx.Request = call.request
        # A node of ours gets the context; an address is called as any HTTP client would.
        resolved = call.address is None
        if resolved:
            for name, value in call.context.headers():
                if name != TIMEOUT_HEADER and name not in request.headers:
                    request.headers[name] = value

        async def attempt(node: Node, remaining: float | None) -> httpx.Response:
            if resolved and remaining is not None:
                request.headers[TIMEOUT_HEADER] = str(max(1, int(remaining * 1000)))
            return await self._pooled.open(request, node.host, node.port, timeout=remaining)

        return await self.client.attempts(
            call.service,
            attempt,
            context=call.context,
            idempotent=request.method in IDEMPOTENT_METHODS,
            retries=self.client.retries,
            address=call.address,
            endpoint=call.endpoint,
        )

    async def aclose(self) -> None:
        """Nothing to close: the pool belongs to the service's client."""


def _direct_address(url: httpx.URL) -> str | None:
    """``host:port`` for URLs that name a node rather than a service."""
    host = url.host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if url.port is None:
            return None
    port = url.port or 80
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
