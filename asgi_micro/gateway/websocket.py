"""WebSockets through the API gateway: the caller's socket relayed to a node's, both ways.

The node is chosen as for any call (selection, ejection, only nodes whose registration
verifies with auth on), and another is tried when one cannot be reached: nothing has been sent
before the handshake, so any endpoint may be. Once both sockets are open, text and binary
messages pass through as they are, in order, until either side closes; the close code and
reason pass through too, so the caller sees a service's ``4000 + status`` closes. A node that
refuses the handshake is answered to the caller as a close before acceptance (a refusal), as
the service itself would.

A session has no deadline (it lasts as long as both sides want it): the gateway's timeout
bounds only the opening handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Final

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Origin, Subprotocol

from ..errors import ConnectionFailed, MicroError
from ..types import Receive, Send

__all__ = ["WEBSOCKET_HEADERS", "open_upstream", "relay"]

WEBSOCKET_HEADERS: Final = frozenset(
    (
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"sec-websocket-accept",
        b"origin",
    )
)
"""The handshake's own headers: the gateway's connection to the node makes its own."""


async def open_upstream(
    address: str,
    target: str,
    headers: Sequence[tuple[bytes, bytes]],
    *,
    service: str,
    origin: str | None,
    subprotocols: Sequence[str],
    timeout: float | None,
    max_size: int,
) -> ClientConnection:
    """The node's WebSocket at ``target``; ``ConnectionFailed`` when the node cannot be
    reached (any endpoint may then be tried elsewhere), the node's error when it refuses."""
    try:
        return await connect(
            f"ws://{address}{target}",
            additional_headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers],
            origin=Origin(origin) if origin else None,
            subprotocols=[Subprotocol(p) for p in subprotocols] or None,
            open_timeout=timeout,
            max_size=max_size,
            compression=None,
            proxy=None,
            user_agent_header=None,
        )
    except InvalidStatus as exc:
        status, body = exc.response.status_code, bytes(exc.response.body or b"")
        raise MicroError.from_body(status, body, id=service) from None
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        raise ConnectionFailed(
            f"could not open a WebSocket to {service} at {address}: {exc}", id=service
        ) from None


async def relay(upstream: ClientConnection, receive: Receive, send: Send) -> None:
    """Accept the caller's socket with the subprotocol the node chose, then relay both ways
    until one side closes, and close the other the same way."""
    await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})

    async def from_caller() -> None:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                await upstream.close(code=_sendable(message.get("code", 1000)))
                return
            text = message.get("text")
            await upstream.send(text if text is not None else message.get("bytes") or b"")

    async def from_node() -> None:
        with contextlib.suppress(ConnectionClosed):  # the node's close, read below
            async for message in upstream:
                if isinstance(message, str):
                    await send({"type": "websocket.send", "text": message})
                else:
                    await send({"type": "websocket.send", "bytes": bytes(message)})
        code = _sendable(upstream.close_code or 1005)
        await send({"type": "websocket.close", "code": code, "reason": upstream.close_reason or ""})

    async with upstream:
        tasks = [asyncio.ensure_future(from_caller()), asyncio.ensure_future(from_node())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:  # the other side is over too: nothing more to relay
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            task.result()


def _sendable(code: int) -> int:
    """A code that a close frame may carry: 1005 (none given) is sent as 1000, 1006 and 1015
    (the connection broke) as 1011."""
    return {1005: 1000, 1006: 1011, 1015: 1011}.get(code, code)
