"""How much a client may send, and for how long: the defaults, in one place.

``max_message_size`` is one limit for every protocol: an HTTP request body (413), a WebSocket
message (closed with 1009) and a gRPC request message (``RESOURCE_EXHAUSTED``). The service
enforces it (``Service(max_message_size=)``, ``MICRO_MAX_MESSAGE_SIZE``) in ``MicroMiddleware``
and its gRPC server, under any ASGI server. The others bound a connection, so the HTTP server
enforces them (``asgi_micro.server``, which ``asgi-micro run`` serves with): the size of the
header block (431), the time to send it, the time a body may go without progress (408), the
keep-alive timeout (uvicorn's) and the number of connections (beyond it, 503 and closed).

The defaults are for a service that faces the public internet: generous for a legitimate
client (a header block of 64 KiB holds large cookies and tokens; 30 s without a byte is a
stalled upload, not a slow one), tight enough that a few hundred hostile connections cost
megabytes, not gigabytes, and go away by themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_HEADER_SIZE",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "ServerLimits",
]

DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024
"""The largest request body, WebSocket message or gRPC message (gRPC's own default)."""
DEFAULT_MAX_HEADER_SIZE = 64 * 1024
"""The largest request line and header block together."""
DEFAULT_HEADER_TIMEOUT = 10.0
"""Seconds a client has to send a request's whole header block, from its first byte."""
DEFAULT_BODY_TIMEOUT = 30.0
"""Seconds a request body may go without a byte arriving (while the app waits for it)."""
DEFAULT_MAX_CONNECTIONS = 1000
"""Open HTTP and WebSocket connections per server process; keep it below ``ulimit -n``."""


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What the HTTP server bounds per connection (``asgi_micro.server``); the keep-alive
    timeout is uvicorn's own ``timeout_keep_alive``."""

    max_header_size: int = DEFAULT_MAX_HEADER_SIZE
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    def __post_init__(self) -> None:
        for name in ("max_header_size", "header_timeout", "body_timeout", "max_connections"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
