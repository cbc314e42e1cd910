"""``MicroHttpProtocol``: uvicorn's httptools protocol, bounded for a server that faces the public.

uvicorn bounds neither a request's header block nor the time a client takes to send it or its
body, and its keep-alive timeout starts only after a response: a client that sends slowly, or
nothing at all, holds a connection (and a file descriptor) for as long as it likes. This
protocol bounds each connection (``ServerLimits``: ``MICRO_*`` settings, or ``with_limits``):

- ``max_header_size``: the request line and headers together; more is answered 431.
- ``header_timeout``: seconds to send them whole, from their first byte; then 408.
- ``body_timeout``: seconds a body may go without a byte while the app waits for it; then 408
  (closed without an answer once the response has begun), and the app's ``receive`` says the
  client has gone, so the request ends and no drain waits for it.
- uvicorn's ``timeout_keep_alive`` from the moment a connection opens, not only after a response.
- ``max_connections``: a connection beyond it is answered 503 and closed at once.

An answer that closes the connection while the request's body is still coming (a 413) is
followed by a graceful close: the server stops writing and drops what the client still sends,
for up to ``LINGER`` seconds, so that a client busy sending reads the answer instead of a
reset connection.

A request that arrives in one read pays for a few attribute tests and two parser callbacks of
this class (under a microsecond): timers are armed only for a request that spans reads. The
protocol hooks into uvicorn's own (``data_received`` is uvicorn's, with the limits around the
parser) as uvicorn 0.54 has it.

``asgi-micro run`` serves with this protocol. With uvicorn itself (the service's own limit,
``MICRO_MAX_MESSAGE_SIZE``, also bounds WebSocket messages; ``--ws-max-size`` makes uvicorn
refuse them before it buffers them)::

    uvicorn app:app --http asgi_micro.server:MicroHttpProtocol --ws-max-size 4194304
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any, ClassVar, cast

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from .errors import (
    SERVER_ID,
    MicroError,
    RequestHeaderFieldsTooLarge,
    ServiceUnavailable,
    Timeout,
)
from .limits import ServerLimits
from .settings import Settings

__all__ = ["LINGER", "MicroHttpProtocol", "ServerLimits"]

logger = logging.getLogger(__name__)

LINGER = 5.0
"""Seconds a connection answered before its request's body was read keeps dropping that body."""
_CAP_WARNING_INTERVAL = 10.0


class _Refused(Exception):
    """Raised in a parser callback to stop parsing a request that has been answered."""


class MicroHttpProtocol(HttpToolsProtocol):
    limits: ClassVar[ServerLimits | None] = None
    """The limits of every connection; ``None``: from the ``MICRO_*`` settings."""
    _cap_warned_at: ClassVar[float] = float("-inf")

    @classmethod
    def with_limits(cls, limits: ServerLimits) -> type[MicroHttpProtocol]:
        """This protocol with ``limits`` instead of the settings', for
        ``uvicorn.Config(app, http=MicroHttpProtocol.with_limits(...))``."""
        return cast(type[MicroHttpProtocol], type(cls.__name__, (cls,), {"limits": limits}))

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = self.limits or _settings_limits()
        self.max_header_size = limits.max_header_size
        self.header_timeout = limits.header_timeout
        self.body_timeout = limits.body_timeout
        self.max_connections = limits.max_connections
        # One timer at a time: for the headers, the body, or the lingering close.
        self._timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0  # of reads that held nothing but this request's headers
        self._headers_spanned = False  # whether they began in an earlier read
        self._read_size = 0
        self._receiving_body = False
        self._last_read = 0.0
        self._lingering = False

    # -- the connection -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._warn_over_capacity()
            self._answer(ServiceUnavailable(f"over {self.max_connections} connections"))
            self.transport.close()
            return
        # A connection that has not sent a request yet is as idle as one between requests.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # answered already: what the client still sends is dropped
        keep_alive = self.timeout_keep_alive_task
        self._unset_keepalive_if_required()
        before = self.scope
        receiving_body = self._receiving_body
        self._read_size = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self._lingering or self.transport.is_closing():
                return  # refused in a callback, and answered
            message = "Invalid HTTP request received."
            self.logger.warning(message)
            self.send_400_response(message)
            return
        scope = self.scope
        if scope is not None and "method" not in scope:  # the headers are not all here yet
            if scope is before:  # nor were they before it: the whole read is headers
                self._header_bytes += len(data)
                if self._header_bytes > self.max_header_size:
                    self._refuse(self._headers_too_large())
            else:  # a request began in this read
                self._header_bytes = 0
                self._headers_spanned = True
                if self._timer is None:
                    self._timer = self.loop.call_later(self.header_timeout, self._headers_late)
        elif self._receiving_body:
            self._last_read = self.loop.time()
            if self._timer is None:
                self._timer = self.loop.call_later(self.body_timeout, self._body_stalled)
                self._close_gracefully_when_answered()
        elif self.timeout_keep_alive_task is None and (
            self.cycle is None or self.cycle.response_complete
        ):
            # Nothing is in flight. The read ended a body already answered: the connection
            # is idle from now. It began no request (blank lines): as idle as it was.
            if keep_alive is None or receiving_body:
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler
                )
            else:
                self.timeout_keep_alive_task = self.loop.call_at(
                    keep_alive.when(), self.timeout_keep_alive_handler
                )

    # -- parser callbacks ---------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        if self._timer is not None:
            self._cancel_timer()
        if self._headers_spanned or self._read_size > self.max_header_size:
            self._headers_spanned = False
            size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
            if size > self.max_header_size:
                self._refuse(self._headers_too_large())
                raise _Refused
        HttpToolsProtocol.on_headers_complete(self)  # what super() finds, for less per request
        cycle = self.cycle
        # A request has a cycle of its own; an upgrade to a WebSocket has none.
        self._receiving_body = cycle is not None and cycle.scope is self.scope

    def on_message_complete(self) -> None:
        self._receiving_body = False
        if self._timer is not None:
            self._cancel_timer()
        HttpToolsProtocol.on_message_complete(self)

    # -- limits -------------------------------------------------------------------------------

    def _headers_too_large(self) -> MicroError:
        return RequestHeaderFieldsTooLarge(f"request headers over {self.max_header_size} bytes")

    def _headers_late(self) -> None:
        self._timer = None
        scope = self.scope
        if scope is None or "method" in scope or self.transport.is_closing():
            return
        logger.info("%s: no request headers within %ss", self._peer(), self.header_timeout)
        if not self._busy():
            self._answer(Timeout(f"request headers not complete within {self.header_timeout}s"))
        self.transport.close()

    def _body_stalled(self) -> None:
        self._timer = None
        if not self._receiving_body or self.transport.is_closing():
            return
        now = self.loop.time()
        if self.flow.read_paused:
            self._last_read = now  # the app has not read what came: the wait is not the client's
        waited = now - self._last_read
        if waited < self.body_timeout:
            self._timer = self.loop.call_later(self.body_timeout - waited, self._body_stalled)
            return
        logger.info("%s: no request body for %ss", self._peer(), self.body_timeout)
        cycle = self.cycle
        if not cycle.response_started and not self.pipeline:  # else an answer is still to come
            self._answer(Timeout(f"no request body for {self.body_timeout}s"))
        cycle.disconnected = True  # the app's receive says so, and what it sends is dropped
        cycle.message_event.set()
        self.transport.close()

    def _refuse(self, error: MicroError) -> None:
        """Answer ``error`` and close gracefully; only close when other requests' answers
        are still to come on this connection."""
        logger.info("%s: %s", self._peer(), error.detail)
        if self._busy():
            self.transport.close()
            return
        self._answer(error)
        self._linger()

    def _busy(self) -> bool:
        cycle = self.cycle
        return bool(self.pipeline) or (cycle is not None and not cycle.response_complete)

    def _warn_over_capacity(self) -> None:
        now = self.loop.time()
        cls = MicroHttpProtocol
        if now - cls._cap_warned_at >= _CAP_WARNING_INTERVAL:
            cls._cap_warned_at = now
            logger.warning(
                "refusing connections: %d are open, max_connections", self.max_connections
            )

    # -- answering and closing ----------------------------------------------------------------

    def _answer(self, error: MicroError) -> None:
        """Write ``error`` as a whole response in Go Micro's shape, ending the connection."""
        error.id = error.id or SERVER_ID
        body = error.to_json()
        content = [STATUS_LINE[error.code]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.append(
            b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % len(body)
        )
        content.append(body)
        self.transport.write(b"".join(content))

    def _close_gracefully_when_answered(self) -> None:
        """Have the request whose body is still coming close the connection by lingering,
        should it be answered before the body is all read. Writes go straight through."""
        cycle = self.cycle
        cycle.transport = cast(asyncio.Transport, _LingeringClose(self.transport, self._close))
        cycle.on_response = self._response_sent

    def _close(self) -> None:
        if self._receiving_body:
            self._linger()
        else:
            self.transport.close()

    def _response_sent(self) -> None:
        if self._lingering:
            self.server_state.total_requests += 1
            return
        self.on_response_complete()

    def _linger(self) -> None:
        """Stop writing, drop what the client still sends, and close on its EOF or after
        ``LINGER`` seconds."""
        if self._lingering:
            return
        self._lingering = True
        self._receiving_body = False
        self._cancel_timer()
        self._unset_keepalive_if_required()
        transport = self.transport
        if transport.is_closing():
            return
        if not transport.can_write_eof():  # TLS
            transport.close()
            return
        transport.write_eof()
        self.flow.resume_reading()
        self._timer = self.loop.call_later(LINGER, transport.close)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "a client"


class _LingeringClose:
    """The transport as a request whose body is still arriving sees it: ``write`` and
    ``is_closing`` are the transport's own, ``close`` lingers while the body comes."""

    __slots__ = ("close", "is_closing", "write")

    def __init__(self, transport: asyncio.Transport, close: Callable[[], None]) -> None:
        self.write = transport.write
        self.is_closing = transport.is_closing
        self.close = close


@functools.cache
def _settings_limits() -> ServerLimits:
    return Settings().server_limits()
