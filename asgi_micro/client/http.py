"""The HTTP/1.1 transport under the client: pooled keep-alive connections over asyncio.

One ``asyncio.Protocol`` per connection feeds ``httptools.HttpResponseParser`` (uvicorn's
parser) and resolves one future per request; there is no task, no stream reader and no lock per
request, and the request goes out in one ``transport.write``. Connections are kept per
``(host, port)``, one request at a time each, reused warmest first (LIFO) and closed after
``keepalive_expiry`` seconds idle, before the server's own idle timeout (uvicorn: 5 s) can race a
request onto a connection it is closing.

Failures say whether the request may have run, because retries depend on it:

- ``ConnectionFailed`` (503): the request was not sent (connect refused or timed out).
- ``ConnectionLost`` (502): the connection broke after the request was written and before the
  whole response came; the node may have processed it.
- ``Timeout`` (408): ``timeout`` passed; it bounds connect, write and the whole response.

A connection that failed, timed out or was cancelled mid-request is closed, never pooled again.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
from collections import deque
from collections.abc import Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, cast

import httptools

from asgi_micro import errors

__all__ = ["HTTPTransport", "Headers", "Response", "StreamingResponse"]

_ID = errors.CLIENT_ID
_BODY_METHODS = frozenset(("POST", "PUT", "PATCH"))
# Computed from the body, so a caller's copy could only contradict it.
_FRAMING_HEADERS = frozenset((b"content-length", b"transfer-encoding"))
_SPECIAL_HEADERS = _FRAMING_HEADERS | {b"host", b"connection"}
# A stream stops reading from the socket when this much is buffered and nobody consumes it.
_STREAM_HIGH_WATER = 256 * 1024
_STREAM_LOW_WATER = 64 * 1024
Headers = Sequence[tuple[str | bytes, str | bytes]]


class Response:
    """A complete response; header names are lower-case bytes, in the order they came."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name``, or ``None``."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def __repr__(self) -> str:
        return f"<Response {self.status} ({len(self.body)} bytes)>"


class StreamingResponse:
    """A response whose body is read as it arrives: ``async for chunk in response``.

    ``timeout`` (from :meth:`HTTPTransport.stream`) still bounds the whole exchange and
    ``read_timeout`` bounds each wait for more data. The body is not limited by
    ``max_response_size`` (streams may be endless); reading pauses while unread data piles up.
    """

    __slots__ = (
        "_buffered",
        "_chunks",
        "_closed",
        "_connection",
        "_deadline",
        "_done",
        "_error",
        "_paused",
        "_read_timeout",
        "_waiter",
        "headers",
        "status",
    )

    def __init__(
        self, connection: _Connection, deadline: float | None, read_timeout: float | None
    ) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._connection = connection
        self._deadline = deadline
        self._read_timeout = read_timeout
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._done = False
        self._error: errors.MicroError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name``, or ``None``."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def __aiter__(self) -> StreamingResponse:
        return self

    async def __anext__(self) -> bytes:
        deadline = self._deadline
        if (
            deadline is not None
            and not self._done
            and self._connection.pool.loop.time() >= deadline
        ):
            # Data that keeps coming must not outlast the deadline either.
            self._expire()
        chunks = self._chunks
        while not chunks:
            if self._error is not None:
                raise self._error
            if self._done:
                raise StopAsyncIteration
            await self._wait()
        chunk = chunks.popleft()
        self._buffered -= len(chunk)
        if self._paused and self._buffered <= _STREAM_LOW_WATER:
            self._paused = False
            self._connection.transport.resume_reading()
        return chunk

    async def aclose(self) -> None:
        """Release the connection; one closed before the end of the body is not reused."""
        if self._closed:
            return
        self._closed = True
        connection = self._connection
        if not self._done and self._error is None:
            connection.abandon(self)
        connection.pool.end_request()

    async def _wait(self) -> None:
        loop = self._connection.pool.loop
        when = self._deadline
        if self._read_timeout is not None:
            read_by = loop.time() + self._read_timeout
            when = read_by if when is None else min(when, read_by)
        self._waiter = waiter = loop.create_future()
        timer = None if when is None else loop.call_at(when, self._expire)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _expire(self) -> None:
        # The connection may have finished this stream and moved on to another request.
        if self._connection.stream is self:
            self._connection.expire()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > _STREAM_HIGH_WATER and not self._paused:
            self._paused = True
            self._connection.transport.pause_reading()
        self._wake()

    def _end(self) -> None:
        self._done = True
        if self._paused:
            # The connection goes back to the pool reading again.
            self._paused = False
            self._connection.transport.resume_reading()
        self._wake()

    def _fail(self, error: errors.MicroError) -> None:
        self._error = error
        self._wake()

    def __repr__(self) -> str:
        return f"<StreamingResponse {self.status}>"


class _StopParsing(Exception):
    """Raised from a parser callback once the exchange is settled, to drop the rest of the data."""


class _Connection(asyncio.Protocol):
    """One connection; it is also the parser's callback object, so parsing costs no extra calls.

    Between requests it sits in its pool's idle stack. During one, ``busy`` is set and the
    response lands either in the fields here (``request``) or in ``stream``.
    """

    __slots__ = (
        "body",
        "busy",
        "closed",
        "deadline",
        "fd",
        "head_only",
        "headers",
        "headers_done",
        "idle_since",
        "keep_alive",
        "lost",
        "parked",
        "parser",
        "pool",
        "response_started",
        "reused",
        "size",
        "status",
        "stream",
        "timer",
        "timer_at",
        "transport",
        "waiter",
    )

    transport: asyncio.Transport
    fd: int

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.busy = False
        self.closed = False
        self.parked = False
        self.reused = False
        self.idle_since = 0.0
        self.lost: asyncio.Future[None] | None = None
        self.waiter: asyncio.Future[Response | None] | None = None
        self.stream: StreamingResponse | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        self.deadline: float | None = None
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.size = 0
        self.head_only = False
        self.headers_done = False
        self.keep_alive = True
        self.response_started = False

    def send(
        self,
        data: bytes,
        deadline: float | None,
        *,
        head_only: bool,
        keep_alive: bool,
        stream: StreamingResponse | None = None,
    ) -> asyncio.Future[Response | None]:
        """Write one request; the future resolves with the response (or ``None`` for a stream
        once its headers are in)."""
        loop = self.pool.loop
        self.waiter = waiter = loop.create_future()
        self.busy = True
        self.status = 0
        self.headers = []
        self.body = []
        self.size = 0
        self.head_only = head_only
        self.headers_done = False
        self.keep_alive = keep_alive
        self.response_started = False
        self.stream = stream
        self.deadline = deadline
        # The timer is lazy: it stays armed across requests and re-arms itself when it fires
        # before the current deadline, so a steady stream of requests costs no timer calls.
        if deadline is not None and (self.timer is None or deadline < self.timer_at):
            self._arm(deadline)
        self.transport.write(data)
        return waiter

    def abandon(self, exchange: object) -> None:
        """The caller of ``exchange`` (its waiter or stream) gave up, cancelled or closing a
        stream early: the connection is in an unknown state, so it is closed."""
        if self.busy and (self.waiter is exchange or self.stream is exchange):
            self.busy = False
            self.waiter = None
            self.stream = None
            self.drop()

    def expire(self) -> None:
        """The exchange ran out of time: fail it and close the connection."""
        self._fail(errors.Timeout(f"no complete response from {self.pool} in time", id=_ID))

    def peer_closed(self) -> bool:
        """Whether the idle connection is readable: the peer closed it or broke the protocol."""
        readable, _, _ = select.select((self.fd,), (), (), 0)
        return bool(readable)

    def drop(self, *, abort: bool = True) -> None:
        """Close the connection and take it out of the pool (once)."""
        if self.closed:
            return
        self.closed = True
        self._stop_timer()
        if abort:
            self.transport.abort()
        else:
            self.transport.close()
        self.pool.forget(self)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.fd = transport.get_extra_info("socket").fileno()

    def eof_received(self) -> None:
        if not self.busy:
            # Out of the pool now rather than when the loop gets round to connection_lost.
            self.drop(abort=False)

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            # An idle connection must stay silent; anything else leaves it in an unknown state.
            self.drop()
            return
        self.response_started = True
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self.busy:
                error = errors.BadGateway(f"invalid HTTP response from {self.pool}: {exc}", id=_ID)
                error.__cause__ = exc
                self._fail(error)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)
        if self.closed:
            return
        self.closed = True
        self._stop_timer()
        if self.busy:
            if self.headers_done and _body_ends_at_close(self.headers):
                self._finish(keep_alive=False)
            else:
                error = errors.ConnectionLost(
                    f"connection to {self.pool} closed before the response was complete"
                    + (f" ({exc})" if exc else "")
                    + "; the request was sent and may have been processed",
                    id=_ID,
                    reused=self.reused,
                    response_started=self.response_started,
                )
                error.__cause__ = exc
                self._fail(error)
        self.pool.forget(self)

    # httptools callbacks

    def on_message_begin(self) -> None:
        if not self.busy:
            # The server sent more than one response to one request.
            self.drop()
            raise _StopParsing

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        self.status = status
        if status < 200:
            return
        self.headers_done = True
        stream = self.stream
        if stream is not None:
            # From here the stream bounds its own reads; the lazy timer sees no waiter and stops.
            stream.status = status
            stream.headers = self.headers
            waiter = self.waiter
            self.waiter = None
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        if self.head_only:
            # The parser cannot be told that a HEAD response has no body (it would wait for
            # Content-Length bytes), so the exchange ends here and a fresh parser takes over.
            keep_alive = self.parser.should_keep_alive()
            self.parser = httptools.HttpResponseParser(self)
            self._finish(keep_alive=keep_alive)
            raise _StopParsing

    def on_body(self, body: bytes) -> None:
        stream = self.stream
        if stream is not None:
            stream._feed(body)
            return
        self.size += len(body)
        if self.size > self.pool.max_response_size:
            self._fail(
                errors.PayloadTooLarge(
                    f"response from {self.pool} exceeds {self.pool.max_response_size} bytes",
                    id=_ID,
                )
            )
            raise _StopParsing
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.status < 200:
            # An interim response (100 Continue, 103 Early Hints): the real one follows.
            self.headers = []
            return
        self._finish(keep_alive=self.parser.should_keep_alive())

    # exchange outcomes

    def _finish(self, *, keep_alive: bool) -> None:
        self.busy = False
        stream = self.stream
        if stream is None:
            waiter = self.waiter
            if waiter is not None and not waiter.done():
                chunks = self.body
                body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                waiter.set_result(Response(self.status, self.headers, body))
        else:
            self.stream = None
            stream._end()
        self.waiter = None
        if keep_alive and self.keep_alive and not self.closed:
            self.reused = True
            self.pool.release(self)
        else:
            self.drop(abort=False)

    def _fail(self, error: errors.MicroError) -> None:
        if not self.busy:
            return
        self.busy = False
        waiter = self.waiter
        stream = self.stream
        self.waiter = None
        self.stream = None
        if waiter is not None:
            if not waiter.done():
                waiter.set_exception(error)
        elif stream is not None:
            stream._fail(error)
        self.drop()

    def _arm(self, when: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer_at = when
        self.timer = self.pool.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        deadline = self.deadline
        if not self.busy or self.waiter is None or deadline is None:
            return
        if self.pool.loop.time() < deadline:
            self._arm(deadline)
        else:
            self.expire()

    def _stop_timer(self) -> None:
        timer = self.timer
        if timer is not None:
            self.timer = None
            timer.cancel()


def _body_ends_at_close(headers: list[tuple[bytes, bytes]]) -> bool:
    """A response without Content-Length or Transfer-Encoding is delimited by the close."""
    return not any(name in _FRAMING_HEADERS for name, _ in headers)


class _Pool:
    """The connections to one ``(host, port)``."""

    __slots__ = (
        "connections",
        "dialing",
        "host",
        "host_line",
        "idle",
        "in_flight",
        "keepalive_expiry",
        "loop",
        "max_connections",
        "max_response_size",
        "owner",
        "port",
        "sweeper",
        "waiters",
    )

    def __init__(self, owner: HTTPTransport, host: str, port: int) -> None:
        self.owner = owner
        self.loop = asyncio.get_running_loop()
        self.host = host
        self.port = port
        authority = f"[{host}]" if ":" in host else host
        if port != 80:
            authority = f"{authority}:{port}"
        self.host_line = b"Host: %s\r\n" % authority.encode("idna")
        self.max_connections = owner.max_connections_per_host
        self.keepalive_expiry = owner.keepalive_expiry
        self.max_response_size = owner.max_response_size
        self.connections: set[_Connection] = set()
        self.dialing = 0
        self.idle: deque[_Connection] = deque()  # oldest first; taken from the end
        self.waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self.in_flight = 0
        self.sweeper: asyncio.TimerHandle | None = None

    def take_idle(self) -> _Connection | None:
        idle = self.idle
        while idle:
            connection = idle.pop()
            connection.parked = False
            idle_for = self.loop.time() - connection.idle_since
            if idle_for >= self.keepalive_expiry:
                # The warmest connection has expired, so every idle one has.
                connection.drop(abort=False)
                while idle:
                    stale = idle.pop()
                    stale.parked = False
                    stale.drop(abort=False)
                return None
            # Polled every time (about a microsecond): a close the event loop has not read yet
            # would otherwise take the request with it, and a request that is not idempotent
            # cannot be sent again.
            if not connection.peer_closed():
                return connection
            connection.drop()
        return None

    def release(self, connection: _Connection) -> None:
        """A connection finished a request cleanly: hand it to a waiter or park it."""
        if self.waiters and self._hand_over(connection):
            return
        connection.idle_since = self.loop.time()
        connection.parked = True
        self.idle.append(connection)
        if self.sweeper is None:
            self.sweeper = self.loop.call_at(
                connection.idle_since + self.keepalive_expiry, self._sweep
            )

    def forget(self, connection: _Connection) -> None:
        """A connection closed: its slot is free for a waiter."""
        if connection.parked:
            connection.parked = False
            self.idle.remove(connection)
        self.connections.discard(connection)
        self.grant_slot()
        if not self.connections and not self.in_flight:
            self.owner._prune(self)

    def end_request(self) -> None:
        self.in_flight -= 1
        if not self.in_flight and not self.connections:
            self.owner._prune(self)

    def give_back(self, granted: _Connection | None) -> None:
        """A waiter that was granted a connection or slot gave up before using it."""
        if granted is None:
            self.grant_slot()
        elif not granted.closed:
            self.release(granted)

    def close(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None
        # Waiters wake up to find the transport closed.
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)
        for connection in list(self.connections):
            if connection.busy:
                connection._fail(errors.ConnectionLost("the transport was closed", id=_ID))
            else:
                connection.drop(abort=False)

    def grant_slot(self) -> None:
        """A connection closed or a connect failed: let one waiter try to connect."""
        self._hand_over(None)

    def _hand_over(self, granted: _Connection | None) -> bool:
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(granted)
                return True
        return False

    def _sweep(self) -> None:
        self.sweeper = None
        idle = self.idle
        deadline = self.loop.time() - self.keepalive_expiry
        while idle and idle[0].idle_since <= deadline:
            stale = idle.popleft()
            stale.parked = False
            stale.drop(abort=False)
        if idle:
            self.sweeper = self.loop.call_at(
                idle[0].idle_since + self.keepalive_expiry, self._sweep
            )

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class HTTPTransport:
    """Pooled HTTP/1.1 over TCP; one instance serves every host and belongs to one event loop."""

    def __init__(
        self,
        *,
        max_connections_per_host: int = 256,
        keepalive_expiry: float = 4.0,
        connect_timeout: float = 5.0,
        max_response_size: int = 64 * 1024 * 1024,
    ) -> None:
        self.max_connections_per_host = max_connections_per_host
        self.keepalive_expiry = keepalive_expiry
        self.connect_timeout = connect_timeout
        self.max_response_size = max_response_size
        self._pools: dict[tuple[str, int], _Pool] = {}
        self._closed = False

    async def request(
        self,
        host: str,
        port: int,
        method: str,
        target: str,
        *,
        headers: Headers = (),
        body: bytes = b"",
        timeout: float | None = None,
    ) -> Response:
        """Send one request and read the whole response.

        ``timeout`` bounds everything: waiting for a connection, connecting, writing and
        reading the response.
        """
        pool = self._pools.get((host, port)) or self._new_pool(host, port)
        deadline = None if timeout is None else pool.loop.time() + timeout
        pool.in_flight += 1
        try:
            data, keep_alive = _encode_request(method, target, pool.host_line, headers, body)
            connection = pool.take_idle() or await self._connect(
                pool, deadline, self.connect_timeout, deadline
            )
            waiter = connection.send(
                data, deadline, head_only=method == "HEAD", keep_alive=keep_alive
            )
            try:
                return cast(Response, await waiter)
            except asyncio.CancelledError:
                connection.abandon(waiter)
                raise
        finally:
            pool.end_request()

    def stream(
        self,
        host: str,
        port: int,
        method: str,
        target: str,
        *,
        headers: Headers = (),
        body: bytes = b"",
        timeout: float | None = None,
        read_timeout: float | None = None,
        connect_timeout: float | None = None,
        pool_timeout: float | None = None,
    ) -> AbstractAsyncContextManager[StreamingResponse]:
        """Send one request and read the body as it arrives (NDJSON, Server-Sent Events).

        ``async with transport.stream(...) as response: async for chunk in response: ...``;
        the arguments are those of :meth:`open_stream`.
        """
        return _StreamContext(
            self.open_stream(
                host,
                port,
                method,
                target,
                headers=headers,
                body=body,
                timeout=timeout,
                read_timeout=read_timeout,
                connect_timeout=connect_timeout,
                pool_timeout=pool_timeout,
            )
        )

    async def open_stream(
        self,
        host: str,
        port: int,
        method: str,
        target: str,
        *,
        headers: Headers = (),
        body: bytes = b"",
        timeout: float | None = None,
        read_timeout: float | None = None,
        connect_timeout: float | None = None,
        pool_timeout: float | None = None,
    ) -> StreamingResponse:
        """Send one request and return once the response headers are in; the caller must
        ``aclose()`` the response (``stream()`` does it for a block of code).

        ``timeout`` bounds the whole exchange, body included; ``read_timeout`` each wait for the
        headers or for more body; ``connect_timeout`` (default: the transport's) the connect;
        ``pool_timeout`` the wait for a free connection when the host's pool is full.
        """
        pool = self._pools.get((host, port)) or self._new_pool(host, port)
        now = pool.loop.time()
        deadline = None if timeout is None else now + timeout
        wait_deadline = _earliest(deadline, None if pool_timeout is None else now + pool_timeout)
        if connect_timeout is None:
            connect_timeout = self.connect_timeout
        pool.in_flight += 1
        try:
            data, keep_alive = _encode_request(method, target, pool.host_line, headers, body)
            connection = pool.take_idle() or await self._connect(
                pool, deadline, connect_timeout, wait_deadline
            )
            stream = StreamingResponse(connection, deadline, read_timeout)
            read_by = None if read_timeout is None else pool.loop.time() + read_timeout
            waiter = connection.send(
                data,
                _earliest(deadline, read_by),
                head_only=method == "HEAD",
                keep_alive=keep_alive,
                stream=stream,
            )
            try:
                await waiter
            except asyncio.CancelledError:
                connection.abandon(waiter)
                raise
        except BaseException:
            pool.end_request()
            raise
        return stream

    def in_flight(self, host: str, port: int) -> int:
        """Requests to ``host:port`` started and not finished (including open streams)."""
        pool = self._pools.get((host, port))
        return 0 if pool is None else pool.in_flight

    async def aclose(self) -> None:
        """Close every connection; requests in flight fail with ``ConnectionLost``."""
        self._closed = True
        pools = list(self._pools.values())
        self._pools.clear()
        lost: list[asyncio.Future[None]] = []
        for pool in pools:
            for connection in pool.connections:
                if not connection.closed:
                    connection.lost = pool.loop.create_future()
                    lost.append(connection.lost)
            pool.close()
        if lost:
            # Sockets are released in connection_lost; wait so none outlives the transport.
            await asyncio.wait(lost, timeout=1.0)

    async def __aenter__(self) -> HTTPTransport:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _connect(
        self,
        pool: _Pool,
        deadline: float | None,
        connect_timeout: float,
        wait_deadline: float | None,
    ) -> _Connection:
        """A connection to ``pool``'s host: a new one, or one released while waiting."""
        while True:
            if self._closed:
                raise errors.ConnectionFailed("the transport is closed", id=_ID)
            if len(pool.connections) + pool.dialing < pool.max_connections:
                return await self._dial(pool, deadline, connect_timeout)
            granted = await self._wait_for_connection(pool, wait_deadline)
            if granted is not None and not granted.closed:
                return granted
            idle = pool.take_idle()
            if idle is not None:
                return idle

    async def _wait_for_connection(self, pool: _Pool, deadline: float | None) -> _Connection | None:
        waiter: asyncio.Future[_Connection | None] = pool.loop.create_future()
        pool.waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                return await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                pool.give_back(waiter.result())
            else:
                waiter.cancel()
                # A release may already have popped it (and skipped it, being cancelled).
                with contextlib.suppress(ValueError):
                    pool.waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise errors.Timeout(
                    f"no connection to {pool} became free in time", id=_ID
                ) from exc
            raise

    async def _dial(
        self, pool: _Pool, deadline: float | None, connect_timeout: float
    ) -> _Connection:
        connection = _Connection(pool)
        loop = pool.loop
        connect_by = loop.time() + connect_timeout
        pool.dialing += 1
        try:
            async with asyncio.timeout_at(_earliest(deadline, connect_by)):
                await loop.create_connection(lambda: connection, pool.host, pool.port)
        except BaseException as exc:
            pool.dialing -= 1
            pool.grant_slot()
            if isinstance(exc, TimeoutError):
                if deadline is not None and deadline < connect_by:
                    raise errors.Timeout(f"connecting to {pool} ran out of time", id=_ID) from exc
                raise errors.ConnectionFailed(
                    f"connecting to {pool} timed out after {connect_timeout}s", id=_ID
                ) from exc
            if isinstance(exc, OSError):
                raise errors.ConnectionFailed(f"cannot connect to {pool}: {exc}", id=_ID) from exc
            raise
        pool.dialing -= 1
        if self._closed:
            connection.transport.abort()
            raise errors.ConnectionFailed("the transport is closed", id=_ID)
        pool.connections.add(connection)
        return connection

    def _new_pool(self, host: str, port: int) -> _Pool:
        if self._closed:
            raise errors.ConnectionFailed("the transport is closed", id=_ID)
        pool = self._pools[host, port] = _Pool(self, host, port)
        return pool

    def _prune(self, pool: _Pool) -> None:
        """Drop an empty pool so a client that meets many nodes does not keep one per node."""
        if self._pools.get((pool.host, pool.port)) is pool:
            del self._pools[pool.host, pool.port]
        if pool.sweeper is not None:
            pool.sweeper.cancel()
            pool.sweeper = None


class _StreamContext:
    """``async with transport.stream(...) as response``: the response is closed on exit."""

    __slots__ = ("_opening", "_response")

    def __init__(self, opening: Coroutine[Any, Any, StreamingResponse]) -> None:
        self._opening = opening
        self._response: StreamingResponse | None = None

    async def __aenter__(self) -> StreamingResponse:
        self._response = await self._opening
        return self._response

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._response is not None:
            await self._response.aclose()


def _earliest(first: float | None, second: float | None) -> float | None:
    if first is None:
        return second
    if second is None:
        return first
    return min(first, second)


def _encode_request(
    method: str, target: str, host_line: bytes, headers: Headers, body: bytes
) -> tuple[bytes, bool]:
    """The request as one buffer, and whether the connection may be kept after it.

    A caller's Host replaces the default one; Content-Length is always computed from ``body``.
    """
    try:
        lines = [f"{method} {target} HTTP/1.1\r\n".encode("ascii"), host_line]
        keep_alive = True
        for name, value in headers:
            if isinstance(name, str):
                name = name.encode("latin-1")
            if isinstance(value, str):
                value = value.encode("latin-1")
            lower = name.lower()
            if lower in _SPECIAL_HEADERS:
                if lower in _FRAMING_HEADERS:
                    continue
                if lower == b"host":
                    lines[1] = b"Host: %s\r\n" % value
                    continue
                keep_alive = b"close" not in value.lower()
            lines.append(b"%s: %s\r\n" % (name, value))
    except UnicodeEncodeError as exc:
        raise errors.BadRequest(f"request line or header is not latin-1: {exc}", id=_ID) from exc
    if body or method in _BODY_METHODS:
        lines.append(b"Content-Length: %d\r\n" % len(body))
    lines.append(b"\r\n")
    line_count = len(lines)
    lines.append(body)
    data = b"".join(lines)
    # One CR and one LF per line: a line break or space smuggled in a value would add a line
    # (or a request) the server reads as the caller's own.
    head_end = len(data) - len(body)
    if (
        data.count(b"\n", 0, head_end) != line_count
        or data.count(b"\r", 0, head_end) != line_count
        or " " in target
    ):
        raise errors.BadRequest("line break in a header, or space in the request target", id=_ID)
    return data, keep_alive
