"""The HTTP/1.1 transport against real servers on 127.0.0.1.

uvicorn serving a small Starlette app covers what a well-behaved server does; raw asyncio
servers cover what uvicorn never does (closing mid-request, answering HTTP/1.0, sending half a
body or no HTTP at all).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import httpx
import orjson
import pytest
import uvloop
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from asgi_micro import errors
from asgi_micro.client.http import HTTPTransport
from asgi_micro.client.httpx_transport import PooledTransport
from tests.helpers import eventually, free_port, serve

HOST = "127.0.0.1"
PATTERN = bytes(range(256))


def _sync(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return predicate()

    return check


async def until(predicate: Callable[[], bool], message: str) -> None:
    await eventually(_sync(predicate), message=message)


# uvicorn + Starlette


@dataclass
class App:
    """The app's record of what it saw: the client port of every request (one per connection)."""

    port: int = 0
    client_ports: list[int] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def connections(self) -> int:
        return len(set(self.client_ports))

    def asgi(self) -> Starlette:
        async def hello(request: Request) -> Response:
            assert request.client is not None
            self.client_ports.append(request.client.port)
            return Response(b"hello", media_type="text/plain", headers={"X-Reply": "yes"})

        async def echo(request: Request) -> Response:
            body = await request.body()
            return Response(
                body,
                media_type=request.headers.get("content-type", "application/octet-stream"),
                headers={"x-request-host": request.headers["host"]},
            )

        async def chunks(request: Request) -> StreamingResponse:
            async def parts() -> AsyncIterator[bytes]:
                for number in range(5):
                    await asyncio.sleep(0)
                    yield b"part %d;" % number

            return StreamingResponse(parts(), media_type="text/plain")

        async def large(request: Request) -> Response:
            size = int(request.query_params["size"])
            return Response(PATTERN * (size // len(PATTERN)), media_type="application/octet-stream")

        async def slow(request: Request) -> Response:
            assert request.client is not None
            self.client_ports.append(request.client.port)
            await asyncio.sleep(float(request.query_params["delay"]))
            return Response(b"slow")

        async def close(request: Request) -> Response:
            assert request.client is not None
            self.client_ports.append(request.client.port)
            return Response(b"bye", headers={"connection": "close"})

        async def empty(request: Request) -> Response:
            return Response(status_code=204)

        async def events(request: Request) -> StreamingResponse:
            async def lines() -> AsyncIterator[bytes]:
                yield b'{"n": 1}\n'
                await self.release.wait()
                yield b'{"n": 2}\n'

            return StreamingResponse(lines(), media_type="application/x-ndjson")

        return Starlette(
            routes=[
                Route("/hello", hello),
                Route("/echo", echo, methods=["POST"]),
                Route("/chunks", chunks),
                Route("/large", large),
                Route("/slow", slow),
                Route("/close", close),
                Route("/empty", empty),
                Route("/events", events),
            ]
        )


@pytest.fixture
async def app() -> AsyncIterator[App]:
    state = App()
    async with serve(state.asgi()) as address:
        state.port = int(address.rsplit(":", 1)[1])
        yield state
        state.release.set()  # a stream left waiting would hold uvicorn's shutdown


@pytest.fixture
async def transport() -> AsyncIterator[HTTPTransport]:
    transport = HTTPTransport()
    try:
        yield transport
    finally:
        await transport.aclose()


# raw servers

Handler = Callable[["RawServer", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class RawServer:
    """Counts connections and requests; ``handle`` runs once per connection."""

    handle: Handler
    port: int = 0
    accepted: int = 0
    closed: int = 0
    requests: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests += 1
        return head

    async def connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.writers.append(writer)
        try:
            await self.handle(self, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.closed += 1


@contextlib.asynccontextmanager
async def raw_server(handle: Handler) -> AsyncIterator[RawServer]:
    state = RawServer(handle)
    server = await asyncio.start_server(state.connected, HOST, 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        for writer in state.writers:
            writer.close()
        await server.wait_closed()
        await asyncio.sleep(0)  # let the closed writers release their sockets


async def until_client_closes(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


async def keep_alive(
    server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    while True:
        await server.read_request(reader)
        writer.write(OK)


async def never_respond(
    server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    await server.read_request(reader)
    await until_client_closes(reader)


async def idle_timeout(
    server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Like uvicorn's timeout_keep_alive, without saying Connection: close first."""
    await server.read_request(reader)
    writer.write(OK)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(reader.read(1), 0.2)


async def close_after_request(
    server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    await server.read_request(reader)


# round trips


async def test_get_and_post_round_trips(app: App, transport: HTTPTransport) -> None:
    response = await transport.request(HOST, app.port, "GET", "/hello")
    assert (response.status, response.body) == (200, b"hello")
    assert response.header(b"content-type") == b"text/plain; charset=utf-8"
    assert response.header(b"X-Reply") == b"yes"
    assert response.header(b"missing") is None
    assert all(name == name.lower() for name, _ in response.headers)

    body = orjson.dumps({"name": "Ada"})
    response = await transport.request(
        HOST, app.port, "POST", "/echo", headers=[("Content-Type", "application/json")], body=body
    )
    assert (response.status, response.body) == (200, body)
    assert response.header(b"content-type") == b"application/json"
    assert response.header(b"x-request-host") == f"{HOST}:{app.port}".encode()


async def test_chunked_response(app: App, transport: HTTPTransport) -> None:
    response = await transport.request(HOST, app.port, "GET", "/chunks")
    assert response.header(b"transfer-encoding") == b"chunked"
    assert response.body == b"part 0;part 1;part 2;part 3;part 4;"


async def test_large_body_over_many_reads(app: App, transport: HTTPTransport) -> None:
    size = 4 * 1024 * 1024
    response = await transport.request(HOST, app.port, "GET", f"/large?size={size}")
    assert response.body == PATTERN * (size // len(PATTERN))


async def test_response_split_into_small_writes(transport: HTTPTransport) -> None:
    response_bytes = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )

    async def trickle(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            await server.read_request(reader)
            for start in range(0, len(response_bytes), 7):
                writer.write(response_bytes[start : start + 7])
                await writer.drain()
                await asyncio.sleep(0.001)

    async with raw_server(trickle) as server:
        for _ in range(2):
            response = await transport.request(HOST, server.port, "GET", "/")
            assert (response.status, response.body) == (200, b"hello world")
        assert server.accepted == 1


async def test_head_and_no_content_have_no_body(app: App, transport: HTTPTransport) -> None:
    head = await transport.request(HOST, app.port, "HEAD", "/hello")
    assert (head.status, head.body, head.header(b"content-length")) == (200, b"", b"5")
    empty = await transport.request(HOST, app.port, "GET", "/empty")
    assert (empty.status, empty.body) == (204, b"")
    assert (await transport.request(HOST, app.port, "GET", "/hello")).body == b"hello"
    assert app.connections == 1


async def test_a_stream_opened_for_head_ends_at_its_headers(
    app: App, transport: HTTPTransport
) -> None:
    async with asyncio.timeout(5):  # a HEAD stream once waited for a body that never comes
        async with transport.stream(HOST, app.port, "HEAD", "/hello") as head:
            assert (head.status, head.header(b"content-length")) == (200, b"5")
            assert [chunk async for chunk in head] == []
        assert transport.in_flight(HOST, app.port) == 0
        assert (await transport.request(HOST, app.port, "GET", "/hello")).body == b"hello"
    assert app.connections == 1


async def test_interim_response_is_skipped(transport: HTTPTransport) -> None:
    async def early_hints(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n" + OK)
        await until_client_closes(reader)

    async with raw_server(early_hints) as server:
        response = await transport.request(HOST, server.port, "GET", "/")
        assert (response.status, response.body, response.header(b"link")) == (200, b"ok", None)


async def test_body_delimited_by_close(transport: HTTPTransport) -> None:
    async def until_close(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")

    async with raw_server(until_close) as server:
        response = await transport.request(HOST, server.port, "GET", "/")
        assert (response.status, response.body) == (200, b"all of it")


# keep-alive


async def test_keep_alive_reuses_one_connection(app: App, transport: HTTPTransport) -> None:
    for _ in range(20):
        assert (await transport.request(HOST, app.port, "GET", "/hello")).status == 200
    assert len(app.client_ports) == 20
    assert app.connections == 1


async def test_server_idle_close_is_survived(transport: HTTPTransport) -> None:
    async with raw_server(idle_timeout) as server:
        assert (await transport.request(HOST, server.port, "GET", "/")).body == b"ok"
        await until(lambda: server.closed == 1, "the server closing the idle connection")
        assert (await transport.request(HOST, server.port, "GET", "/")).body == b"ok"
        assert server.accepted == 2


async def test_connection_close_is_honoured(app: App, transport: HTTPTransport) -> None:
    for _ in range(2):
        assert (await transport.request(HOST, app.port, "GET", "/close")).body == b"bye"
    assert app.connections == 2


async def test_request_connection_close_is_honoured(transport: HTTPTransport) -> None:
    async with raw_server(keep_alive) as server:
        for _ in range(2):
            await transport.request(
                HOST, server.port, "GET", "/", headers=[("Connection", "close")]
            )
        assert server.accepted == 2


async def test_http_10_response_is_not_pooled(transport: HTTPTransport) -> None:
    async def http_10(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await until_client_closes(reader)

    async with raw_server(http_10) as server:
        for _ in range(2):
            assert (await transport.request(HOST, server.port, "GET", "/")).body == b"ok"
        assert server.accepted == 2
        await until(lambda: server.closed == 2, "the client closing HTTP/1.0 connections")


async def test_idle_connections_expire() -> None:
    async with raw_server(keep_alive) as server, HTTPTransport(keepalive_expiry=0.2) as transport:
        await transport.request(HOST, server.port, "GET", "/")
        await transport.request(HOST, server.port, "GET", "/")
        assert server.accepted == 1
        await until(lambda: server.closed == 1, "the client closing its expired connection")
        await transport.request(HOST, server.port, "GET", "/")
        assert server.accepted == 2


# failures


async def test_connect_refused_is_connection_failed(transport: HTTPTransport) -> None:
    with pytest.raises(errors.ConnectionFailed) as caught:
        await transport.request(HOST, free_port(), "GET", "/")
    assert caught.value.id == "asgi_micro.client"
    assert isinstance(caught.value.__cause__, OSError)
    assert transport.in_flight(HOST, 1) == 0


@pytest.fixture
def full_listener() -> Iterator[int]:
    """A port whose accept queue is full: the kernel drops new SYNs, so connects hang."""
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind((HOST, 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        filler.connect((HOST, port))
        yield port


async def test_connect_timeout_is_connection_failed(full_listener: int) -> None:
    async with HTTPTransport(connect_timeout=0.2) as transport:
        with pytest.raises(errors.ConnectionFailed) as caught:
            await transport.request(HOST, full_listener, "GET", "/", timeout=5)
    assert isinstance(caught.value.__cause__, TimeoutError)


async def test_request_timeout_covers_the_connect(
    full_listener: int, transport: HTTPTransport
) -> None:
    with pytest.raises(errors.Timeout):
        await transport.request(HOST, full_listener, "GET", "/", timeout=0.2)
    assert transport.in_flight(HOST, full_listener) == 0


async def test_close_after_request_is_connection_lost(transport: HTTPTransport) -> None:
    async with raw_server(close_after_request) as server:
        with pytest.raises(errors.ConnectionLost) as caught:
            await transport.request(HOST, server.port, "POST", "/", body=b"{}")
    assert (caught.value.reused, caught.value.response_started) == (False, False)
    assert caught.value.id == "asgi_micro.client"
    assert caught.value.code == 502


async def test_reused_connection_lost(transport: HTTPTransport) -> None:
    async def once(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        writer.write(OK)
        await server.read_request(reader)

    async with raw_server(once) as server:
        await transport.request(HOST, server.port, "GET", "/")
        with pytest.raises(errors.ConnectionLost) as caught:
            await transport.request(HOST, server.port, "GET", "/")
    assert (caught.value.reused, caught.value.response_started) == (True, False)


async def test_half_a_body_is_connection_lost(transport: HTTPTransport) -> None:
    async def half(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")

    async with raw_server(half) as server:
        with pytest.raises(errors.ConnectionLost) as caught:
            await transport.request(HOST, server.port, "GET", "/")
    assert (caught.value.reused, caught.value.response_started) == (False, True)


async def test_garbage_is_bad_gateway(transport: HTTPTransport) -> None:
    async def garbage(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await until_client_closes(reader)

    async with raw_server(garbage) as server:
        with pytest.raises(errors.BadGateway) as caught:
            await transport.request(HOST, server.port, "GET", "/")
        assert not isinstance(caught.value, errors.ConnectionLost)
        await until(lambda: server.closed == 1, "the client dropping the connection")


async def test_timeout_discards_the_connection(transport: HTTPTransport) -> None:
    async with raw_server(never_respond) as server:
        with pytest.raises(errors.Timeout) as caught:
            await transport.request(HOST, server.port, "GET", "/", timeout=0.2)
        assert caught.value.id == "asgi_micro.client"
        await until(lambda: server.closed == 1, "the client closing the timed-out connection")
        assert transport.in_flight(HOST, server.port) == 0


async def test_timeout_covers_the_whole_response(app: App, transport: HTTPTransport) -> None:
    await transport.request(HOST, app.port, "GET", "/hello", timeout=30)
    started = time.monotonic()
    with pytest.raises(errors.Timeout):
        # The same connection, now with a shorter deadline than the one before.
        await transport.request(HOST, app.port, "GET", "/slow?delay=1", timeout=0.2)
    assert time.monotonic() - started < 0.9
    # The next request does not land on the connection still waiting for /slow.
    assert (await transport.request(HOST, app.port, "GET", "/hello", timeout=5)).body == b"hello"
    assert app.connections == 2


async def test_cancellation_discards_the_connection(transport: HTTPTransport) -> None:
    async with raw_server(never_respond) as server:
        task = asyncio.create_task(transport.request(HOST, server.port, "GET", "/"))
        await until(lambda: server.requests == 1, "the request reaching the server")
        assert transport.in_flight(HOST, server.port) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: server.closed == 1, "the client closing the cancelled connection")
        assert transport.in_flight(HOST, server.port) == 0


async def test_max_response_size(app: App) -> None:
    async with HTTPTransport(max_response_size=4096) as transport:
        assert (
            len((await transport.request(HOST, app.port, "GET", "/large?size=4096")).body) == 4096
        )
        with pytest.raises(errors.PayloadTooLarge):
            await transport.request(HOST, app.port, "GET", "/large?size=8192")
        assert (await transport.request(HOST, app.port, "GET", "/hello")).body == b"hello"


async def test_line_breaks_in_headers_are_refused(transport: HTTPTransport) -> None:
    async with raw_server(keep_alive) as server:
        with pytest.raises(errors.BadRequest):
            await transport.request(HOST, server.port, "GET", "/", headers=[("x-a", "1\r\nx-b: 2")])
        with pytest.raises(errors.BadRequest):
            await transport.request(HOST, server.port, "GET", "/a b")
        with pytest.raises(errors.BadRequest):
            await transport.request(HOST, server.port, "GET", "/", headers=[("x-a", "\u2603")])
        assert server.accepted == 0
        assert transport.in_flight(HOST, server.port) == 0


# concurrency


async def test_many_requests_share_a_small_pool(app: App) -> None:
    async with HTTPTransport(max_connections_per_host=4) as transport:
        requests = [
            asyncio.create_task(transport.request(HOST, app.port, "GET", "/slow?delay=0.02"))
            for _ in range(64)
        ]
        await asyncio.sleep(0)  # every task has started and is connecting or queued
        assert transport.in_flight(HOST, app.port) == 64
        responses = await asyncio.gather(*requests)
        assert [response.body for response in responses] == [b"slow"] * 64
        assert app.connections <= 4
        assert transport.in_flight(HOST, app.port) == 0


async def test_pool_wait_is_bounded_by_the_timeout(app: App) -> None:
    async with HTTPTransport(max_connections_per_host=1) as transport:
        async with transport.stream(HOST, app.port, "GET", "/events") as stream:
            assert stream.status == 200
            with pytest.raises(errors.Timeout):
                await transport.request(HOST, app.port, "GET", "/hello", timeout=0.2)
            app.release.set()
            assert b"".join([chunk async for chunk in stream]) == b'{"n": 1}\n{"n": 2}\n'
        assert (await transport.request(HOST, app.port, "GET", "/hello")).body == b"hello"


# streaming


async def test_stream_yields_chunks_as_they_arrive(app: App, transport: HTTPTransport) -> None:
    async with transport.stream(HOST, app.port, "GET", "/events") as stream:
        assert stream.status == 200
        assert stream.header(b"content-type") == b"application/x-ndjson"
        assert transport.in_flight(HOST, app.port) == 1
        chunks = aiter(stream)
        assert await anext(chunks) == b'{"n": 1}\n'
        app.release.set()  # the server sends the second line only now
        assert [chunk async for chunk in chunks] == [b'{"n": 2}\n']
    assert transport.in_flight(HOST, app.port) == 0
    assert (await transport.request(HOST, app.port, "GET", "/hello")).body == b"hello"
    assert app.connections == 1  # the stream's connection went back to the pool


async def test_stream_closed_early_discards_the_connection(
    app: App, transport: HTTPTransport
) -> None:
    async with transport.stream(HOST, app.port, "GET", "/events") as stream:
        assert await anext(aiter(stream)) == b'{"n": 1}\n'
    assert transport.in_flight(HOST, app.port) == 0
    assert (await transport.request(HOST, app.port, "GET", "/hello")).body == b"hello"
    assert (await transport.request(HOST, app.port, "GET", "/hello")).body == b"hello"
    assert app.connections == 1  # /hello's own: the stream's connection was not reused


async def test_stream_read_timeout(transport: HTTPTransport) -> None:
    async def stall(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\none\r\n")
        await until_client_closes(reader)

    async with raw_server(stall) as server:
        async with transport.stream(HOST, server.port, "GET", "/", read_timeout=0.2) as stream:
            assert await anext(aiter(stream)) == b"one"
            with pytest.raises(errors.Timeout):
                await anext(aiter(stream))
        await until(lambda: server.closed == 1, "the client closing the stalled stream")


async def test_stream_applies_back_pressure(transport: HTTPTransport) -> None:
    # More than the kernel buffers on loopback (receive buffers autotune up to 32 MiB here).
    size = 96 * 1024 * 1024
    sent = [0]

    async def flood(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        block = PATTERN * 256
        for _ in range(size // len(block)):
            writer.write(block)
            await writer.drain()
            sent[0] += len(block)
        await until_client_closes(reader)

    async with raw_server(flood) as server:
        async with transport.stream(HOST, server.port, "GET", "/") as stream:
            first = await anext(aiter(stream))
            # Nobody reads, so the client stops reading and the server's writes stall.
            samples = [-1]

            def stalled() -> bool:
                samples.append(sent[0])
                return samples[-1] == samples[-2]

            await eventually(_sync(stalled), interval=0.2, message="the server stalling")
            assert sent[0] < size
            received = len(first) + sum([len(chunk) async for chunk in stream])
        assert received == size
        assert server.accepted == 1


# lifecycle


async def test_aclose_is_idempotent_and_final() -> None:
    async with raw_server(keep_alive) as server:
        transport = HTTPTransport()
        await transport.request(HOST, server.port, "GET", "/")
        await transport.aclose()
        await until(lambda: server.closed == 1, "the server seeing the pooled connection close")
        await transport.aclose()
        with pytest.raises(errors.ConnectionFailed):
            await transport.request(HOST, server.port, "GET", "/")


async def test_aclose_fails_requests_in_flight() -> None:
    async with raw_server(never_respond) as server:
        transport = HTTPTransport()
        task = asyncio.create_task(transport.request(HOST, server.port, "GET", "/"))
        await until(lambda: server.requests == 1, "the request reaching the server")
        await transport.aclose()
        with pytest.raises(errors.ConnectionLost):
            await task


# httpx


async def test_httpx_client_over_the_pool(app: App) -> None:
    async with httpx.AsyncClient(
        transport=PooledTransport(), base_url=f"http://{HOST}:{app.port}"
    ) as client:
        response = await client.get("/hello")
        assert (response.status_code, response.text) == (200, "hello")
        assert response.headers["x-reply"] == "yes"
        assert response.http_version == "HTTP/1.1"
        response = await client.post("/echo", json={"name": "Ada"})
        assert response.json() == {"name": "Ada"}
        async with client.stream("GET", "/events") as streamed:
            lines = streamed.aiter_lines()
            assert await anext(lines) == '{"n": 1}'
            app.release.set()
            assert [line async for line in lines] == ['{"n": 2}']
        assert (await client.get("/chunks")).text == "part 0;part 1;part 2;part 3;part 4;"
    assert app.connections == 1


async def test_httpx_send_to_a_resolved_node(app: App) -> None:
    class ByName(PooledTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            assert request.url.host == "inventory"
            return await self.send(request, HOST, app.port)

    async with httpx.AsyncClient(transport=ByName()) as client:
        response = await client.post("http://inventory/echo", content=b"x")
        assert response.headers["x-request-host"] == "inventory"


async def test_httpx_errors_are_httpx_exceptions(app: App, full_listener: int) -> None:
    async with httpx.AsyncClient(transport=PooledTransport()) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://{HOST}:{free_port()}/")
        with pytest.raises(httpx.ConnectTimeout):
            await client.get(
                f"http://{HOST}:{full_listener}/", timeout=httpx.Timeout(5, connect=0.2)
            )
        with pytest.raises(httpx.UnsupportedProtocol):
            await client.get(f"https://{HOST}:{app.port}/hello")
        async with raw_server(never_respond) as server:
            with pytest.raises(httpx.ReadTimeout):
                await client.get(
                    f"http://{HOST}:{server.port}/", timeout=httpx.Timeout(5, read=0.2)
                )
        async with raw_server(close_after_request) as server:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get(f"http://{HOST}:{server.port}/")

    pool = HTTPTransport(max_connections_per_host=1)
    client = httpx.AsyncClient(transport=PooledTransport(pool))
    async with client, client.stream("GET", f"http://{HOST}:{app.port}/events"):
        with pytest.raises(httpx.PoolTimeout):
            await client.get(f"http://{HOST}:{app.port}/hello", timeout=httpx.Timeout(5, pool=0.2))
        app.release.set()
    # A transport given to PooledTransport outlives the client: whoever made it closes it.
    assert (await pool.request(HOST, app.port, "GET", "/hello")).body == b"hello"
    await pool.aclose()


# uvloop


def test_under_uvloop() -> None:
    """uvicorn runs on uvloop, and so may the client: the same paths over uvloop's transports."""

    async def scenario() -> None:
        state = App()
        async with serve(state.asgi()) as address, HTTPTransport() as transport:
            port = int(address.rsplit(":", 1)[1])
            for _ in range(3):
                assert (
                    await transport.request(HOST, port, "GET", "/hello", timeout=5)
                ).body == b"hello"
            body = orjson.dumps({"name": "Ada"})
            assert (await transport.request(HOST, port, "POST", "/echo", body=body)).body == body
            assert state.connections == 1
            async with transport.stream(HOST, port, "GET", "/chunks") as stream:
                assert (
                    b"".join([chunk async for chunk in stream])
                    == b"part 0;part 1;part 2;part 3;part 4;"
                )
            with pytest.raises(errors.Timeout):
                await transport.request(HOST, port, "GET", "/slow?delay=1", timeout=0.2)
            with pytest.raises(errors.ConnectionFailed):
                await transport.request(HOST, free_port(), "GET", "/")

            async with raw_server(idle_timeout) as server:
                assert (await transport.request(HOST, server.port, "GET", "/")).body == b"ok"
                await until(lambda: server.closed == 1, "the server closing the idle connection")
                assert (await transport.request(HOST, server.port, "GET", "/")).body == b"ok"
                assert server.accepted == 2

    uvloop.run(scenario())
