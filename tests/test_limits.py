"""Limits on every path: bodies, header blocks, slow and idle clients, the number of
connections, WebSocket and gRPC messages.

Most tests flood ``asgi-micro run tests/limits_app.py`` in a process of its own (so that its
memory and file descriptors are its own to measure) over raw sockets, with timeouts of a second
(the defaults are longer). A few run the app under plain uvicorn in this process: the service's
limit holds there too, without asgi-micro's server protocol. Every flood is bounded in bytes
and time, and sent to loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import psutil
import pytest
import uvicorn
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from asgi_micro import MicroRouter, Service
from asgi_micro.limits import DEFAULT_MAX_HEADER_SIZE, DEFAULT_MAX_MESSAGE_SIZE, ServerLimits
from asgi_micro.registry.memory import MemoryRegistry
from asgi_micro.server import MicroHttpProtocol
from tests.helpers import free_port, new_mdns_domain, serve
from tests.limits_app import Text
from tests.processes import ROOT, environment

HOST = "127.0.0.1"
MB = 1_000_000
FLOOD = 100 * MB  # what a body flood would send, if the server read it all
HEADER_FLOOD = 50 * MB
CHUNK = 1 * MB
LIMIT = DEFAULT_MAX_MESSAGE_SIZE  # the server under test keeps the default limits
MAX_HEADER_SIZE = DEFAULT_MAX_HEADER_SIZE
TIMEOUT = 1.0  # header, body and keep-alive timeouts of the server under test
MAX_CONNECTIONS = 64
RSS_SLACK = 50 * 1024 * 1024
JSON = {"content-type": "application/json"}


# -- the server under test, in a process of its own ------------------------------------------


@dataclass
class Process:
    popen: subprocess.Popen[bytes]
    port: int
    log: Any

    @property
    def psutil(self) -> psutil.Process:
        return psutil.Process(self.popen.pid)

    def rss(self) -> int:
        return self.psutil.memory_info().rss

    def fds(self) -> int:
        return self.psutil.num_fds()

    def connections(self) -> int:
        return sum(
            1
            for connection in self.psutil.net_connections(kind="tcp")
            if connection.laddr and connection.laddr.port == self.port and connection.raddr
        )

    def output(self) -> str:
        self.log.seek(0)
        return str(self.log.read().decode(errors="replace"))


@pytest.fixture(scope="module")
def server() -> Iterator[Process]:
    """``asgi-micro run`` with one-second timeouts and a cap of 64 connections."""
    port = free_port()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MICRO_REGISTRY", f"mdns://?domain={new_mdns_domain()}")
        env = environment()
    command = [
        str(Path(sys.executable).with_name("asgi-micro")),
        "run",
        "tests/limits_app.py",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--header-timeout",
        str(TIMEOUT),
        "--body-timeout",
        str(TIMEOUT),
        "--keep-alive-timeout",
        str(int(TIMEOUT)),
        "--max-connections",
        str(MAX_CONNECTIONS),
    ]
    with tempfile.TemporaryFile() as log:
        popen = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        process = Process(popen, port, log)
        try:
            _wait_serving(process)
            yield process
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGINT)
            try:
                popen.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(popen.pid, signal.SIGKILL)
                popen.wait()


def _wait_serving(process: Process) -> None:
    deadline = time.monotonic() + 30
    with httpx.Client(base_url=f"http://{HOST}:{process.port}", trust_env=False) as http:
        while time.monotonic() < deadline:
            if process.popen.poll() is not None:
                raise AssertionError(f"the server exited:\n{process.output()}")
            try:
                if http.get("/_micro/health", timeout=1).json()["status"] == "serving":
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    raise AssertionError(f"the server did not serve within 30s:\n{process.output()}")


async def quiet(server: Process) -> None:
    """Wait until the server holds no client connections (those of earlier tests closed)."""
    deadline = time.monotonic() + 5
    while server.connections() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not server.connections(), "connections of an earlier test are still open"


@contextlib.asynccontextmanager
async def peak_rss(server: Process) -> AsyncIterator[list[int]]:
    """Sample the server's RSS every 10 ms while the block runs: ``[idle, peak]``."""
    figures = [server.rss(), 0]

    async def sample() -> None:
        while True:
            figures[1] = max(figures[1], server.rss())
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    try:
        yield figures
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        figures[1] = max(figures[1], server.rss())


# -- a raw HTTP/1.1 client ---------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes
    sent: int = 0  # bytes of the request written when the answer came
    took: float = 0.0
    closed: bool = False  # the server closed the connection after it

    def json(self) -> Any:
        return orjson.loads(self.body)


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head[:-4].split(b"\r\n")
    headers = dict(line.lower().split(b": ", 1) for line in lines)
    body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return Answer(int(status_line.split()[1]), headers, body)


async def send_while_reading(
    port: int,
    head: bytes,
    body: Iterable[bytes] = (),
    *,
    timeout: float = 10.0,
    wait_close: bool = True,
) -> Answer:
    """Send ``head`` and then ``body`` piece by piece, reading the answer all the while (as
    a server that answers early needs); stop sending once it has come. ``wait_close``: then
    wait for the server to close the connection."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(HOST, port)
    sent = 0

    async def write() -> None:
        nonlocal sent
        writer.write(head)
        sent += len(head)
        for piece in body:
            writer.write(piece)
            await writer.drain()
            sent += len(piece)
            await asyncio.sleep(0)  # drain returns at once while the kernel takes it all

    writing = asyncio.create_task(write())
    try:
        answer = await asyncio.wait_for(read_answer(reader), timeout)
        answer.sent, answer.took = sent, time.monotonic() - started
        if wait_close:
            with contextlib.suppress(OSError, TimeoutError):
                answer.closed = await asyncio.wait_for(reader.read(1), timeout) == b""
        return answer
    finally:
        writing.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await writing
        await close(writer)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def pieces(total: int, piece: bytes) -> Iterator[bytes]:
    for _ in range(total // len(piece)):
        yield piece


def chunked(total: int, piece: bytes) -> Iterator[bytes]:
    for data in pieces(total, piece):
        yield b"%x\r\n%s\r\n" % (len(data), data)
    yield b"0\r\n\r\n"


def post(path: str, framing: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: limits\r\ncontent-type: application/json\r\n".encode()
        + framing
        + b"\r\n\r\n"
    )


async def until_closed(reader: asyncio.StreamReader, *, timeout: float) -> tuple[bytes, float]:
    """What the server sent until it closed the connection, and when it closed it."""
    started = time.monotonic()
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while data := await asyncio.wait_for(reader.read(65536), timeout):
            received += data
    return received, time.monotonic() - started


def status_of(received: bytes) -> int:
    return int(received.split(b" ", 2)[1]) if received else 0


# -- bodies --------------------------------------------------------------------------------------


PATHS = ["/upload", "/limits/peer", "/limits/echo"]  # plain route, FastAPI-served RPC, fast RPC


async def test_a_large_body_is_refused_before_it_is_read(server: Process) -> None:
    """Eight concurrent 100 MB bodies, declared and chunked, to a plain route, an RPC that
    FastAPI serves and one on the fast path: 413 in Go Micro's shape at once, the connection
    closed after it, and the server's memory stays where it was."""
    await quiet(server)
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{server.port}") as http:
        for path in PATHS:  # warm up every path: what a first request imports is not the flood's
            response = await http.post(path, json={"text": "warm"})
            assert response.status_code == 200, response.text
    floods: list[Awaitable[Answer]] = []
    for index in range(8):
        path = PATHS[index % len(PATHS)]
        if index % 2:
            head, body = post(path, b"transfer-encoding: chunked"), chunked(FLOOD, b"x" * CHUNK)
        else:
            head, body = (
                post(path, f"content-length: {FLOOD}".encode()),
                pieces(FLOOD, b"x" * CHUNK),
            )
        floods.append(send_while_reading(server.port, head, body))
    async with peak_rss(server) as rss:
        answers = await asyncio.gather(*floods)
    idle, peak = rss
    print(f"\nbody flood: server RSS idle {idle / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB")
    for answer in answers:
        assert answer.status == 413
        assert answer.json()["id"] == "limits"
        assert answer.json()["code"] == 413
        assert answer.headers[b"connection"] == b"close"
        assert answer.closed
        assert answer.took < 5
        assert answer.sent < FLOOD // 2  # answered long before the body was all sent
    assert peak - idle < RSS_SLACK


async def test_a_client_that_sends_its_whole_body_first_still_reads_the_answer(
    server: Process,
) -> None:
    """httpx writes the whole body before it reads: the server drops the rest of the body
    (a graceful close) rather than resetting the connection under the answer."""
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{server.port}", timeout=30) as http:
        response = await http.post("/upload", content=b"x" * (20 * MB))
        assert response.status_code == 413
        assert response.json()["id"] == "limits"

        async def stream() -> AsyncIterator[bytes]:
            for _ in range(20):
                yield b"x" * MB

        response = await http.post("/limits/peer", content=stream())
        assert response.status_code == 413


async def test_a_body_within_the_limit_is_read_and_keep_alive_goes_on(server: Process) -> None:
    """A body that spans reads (written in two parts), then pipelined requests, on one
    connection: keep-alive and pipelining are as uvicorn's."""
    reader, writer = await asyncio.open_connection(HOST, server.port)
    try:
        writer.write(post("/upload", b"content-length: %d" % LIMIT) + b"y" * (LIMIT // 2))
        await asyncio.sleep(0.2)
        writer.write(b"y" * (LIMIT - LIMIT // 2))
        answer = await asyncio.wait_for(read_answer(reader), 10)
        assert (answer.status, answer.json()) == (200, {"size": LIMIT})

        echo = b'{"text":"hi"}'
        request = post("/limits/echo", b"content-length: %d" % len(echo)) + echo
        hello = b"GET /hello HTTP/1.1\r\nhost: limits\r\n\r\n"
        for _ in range(10):  # wrk's pipelining: 16 requests in a write
            writer.write((hello + request) * 8)
            for number in range(16):
                answer = await asyncio.wait_for(read_answer(reader), 10)
                assert answer.status == 200
                assert answer.body == (b'{"hello":"world"}' if number % 2 == 0 else echo)
    finally:
        await close(writer)


async def test_keep_alive_connections_serve_many_requests(server: Process) -> None:
    """wrk's traffic: requests back to back on eight keep-alive connections."""
    async with httpx.AsyncClient(
        base_url=f"http://{HOST}:{server.port}", limits=httpx.Limits(max_connections=8)
    ) as http:

        async def worker() -> None:
            for _ in range(50):
                response = await http.post("/limits/echo", json={"text": "hi"})
                assert response.status_code == 200

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(8))), 30)


# -- headers -----------------------------------------------------------------------------------


async def test_a_large_header_block_is_refused_before_it_is_read(server: Process) -> None:
    """Eight concurrent 50 MB header blocks: 431 as soon as the limit is passed, and the
    server's memory stays where it was."""
    await quiet(server)
    head = b"GET /hello HTTP/1.1\r\nhost: limits\r\nx-flood: "
    floods = [
        send_while_reading(server.port, head, pieces(HEADER_FLOOD, b"a" * CHUNK)) for _ in range(8)
    ]
    async with peak_rss(server) as rss:
        answers = await asyncio.gather(*floods)
    idle, peak = rss
    print(f"\nheader flood: server RSS idle {idle / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB")
    for answer in answers:
        assert answer.status == 431
        assert answer.json()["id"] == "asgi_micro.server"
        assert answer.closed
        assert answer.took < 5
        assert answer.sent < HEADER_FLOOD // 2
    assert peak - idle < RSS_SLACK


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([b"x-one: " + b"a" * (MAX_HEADER_SIZE - 1024)], 200),
        ([b"x-one: " + b"a" * MAX_HEADER_SIZE], 431),
        ([b"x-%d: %s" % (number, b"a" * 1000) for number in range(70)], 431),  # many, in one read
    ],
)
async def test_the_header_limit_counts_the_whole_block(
    server: Process, headers: list[bytes], status: int
) -> None:
    head = b"GET /hello HTTP/1.1\r\nhost: limits\r\n" + b"\r\n".join(headers) + b"\r\n\r\n"
    answer = await send_while_reading(server.port, head, wait_close=False)
    assert answer.status == status


# -- slow and idle clients -----------------------------------------------------------------------


async def test_slow_and_idle_connections_are_closed_within_their_timeouts(
    server: Process,
) -> None:
    """Ten connections each: that never send a request, that send their headers a line at a
    time without end, that stop halfway through a body, that stay idle after a response, and
    that send blank lines after it. The server closes each within its timeout (one second
    here), answers the slow ones 408, gives back their file descriptors, and the requests
    whose bodies stalled end (a drain would not wait for them)."""
    await quiet(server)
    fds_before = server.fds()
    hello = b"GET /hello HTTP/1.1\r\nhost: limits\r\n\r\n"
    kinds: dict[str, tuple[bytes, Callable[[int], bytes] | None, int]] = {
        "idle": (b"", None, 0),
        "slow headers": (hello[:-2], lambda number: b"x-%d: slow\r\n" % number, 408),
        "slow body": (post("/upload", b"content-length: 100000") + b"z" * 1000, None, 408),
        "idle after a response": (hello, None, 200),
        "blank lines after a response": (hello, lambda number: b"\r\n", 200),
    }

    async def connection(first: bytes, then: Callable[[int], bytes] | None) -> tuple[bytes, float]:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        writer.write(first)

        async def keep_sending() -> None:
            assert then is not None
            for number in range(40):  # every 0.2 s: some progress, never the end
                await asyncio.sleep(0.2)
                writer.write(then(number))

        sending = asyncio.create_task(keep_sending()) if then else None
        try:
            return await until_closed(reader, timeout=5)
        finally:
            if sending is not None:
                sending.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await sending
            await close(writer)

    running = {
        name: [asyncio.ensure_future(connection(first, then)) for _ in range(10)]
        for name, (first, then, _) in kinds.items()
    }
    await asyncio.sleep(TIMEOUT / 2)
    fds_during = server.fds()
    print(f"\nslow and idle: server fds {fds_before} before, {fds_during} while 50 were open")
    for name, (_, _, status) in kinds.items():
        for received, took in await asyncio.gather(*running[name]):
            assert status_of(received) == status, (name, received[:200])
            assert TIMEOUT * 0.9 < took < TIMEOUT + 1.5, (name, took)
    assert fds_during >= fds_before + 50
    deadline = time.monotonic() + 5
    while server.fds() > fds_before and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert server.fds() <= fds_before
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{server.port}") as http:
        stats = (await http.get("/_micro/stats")).json()
    assert stats["in_flight"] == 0


async def test_a_body_that_keeps_coming_is_not_cut_off(server: Process) -> None:
    """The body timeout is time without a byte: a body sent slowly over twice the timeout,
    a piece every fifth of it, is read whole."""
    reader, writer = await asyncio.open_connection(HOST, server.port)
    try:
        writer.write(post("/upload", b"content-length: 10"))
        for _ in range(10):
            await asyncio.sleep(TIMEOUT / 5)
            writer.write(b"s")
        answer = await asyncio.wait_for(read_answer(reader), 10)
        assert (answer.status, answer.json()) == (200, {"size": 10})
    finally:
        await close(writer)


async def test_connections_beyond_the_cap_are_refused(server: Process) -> None:
    """With 64 connections open, the next are answered 503 and closed at once (before the
    keep-alive timeout closes the 64 idle ones); once those have gone, the server takes
    connections again."""
    await quiet(server)
    opened = await asyncio.gather(
        *(asyncio.open_connection(HOST, server.port) for _ in range(MAX_CONNECTIONS + 8))
    )
    try:
        closes = await asyncio.gather(*(until_closed(reader, timeout=5) for reader, _ in opened))
    finally:
        for _, writer in opened:
            await close(writer)
    refused = [took for received, took in closes if status_of(received) == 503]
    idle = [took for received, took in closes if not received]
    assert (len(refused), len(idle)) == (8, MAX_CONNECTIONS)
    assert max(refused) < TIMEOUT / 2 < TIMEOUT * 0.9 < min(idle)
    await quiet(server)
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{server.port}") as http:
        assert (await http.get("/hello")).status_code == 200


# -- WebSocket and gRPC messages ---------------------------------------------------------------


async def test_a_websocket_message_over_the_limit_closes_the_session(server: Process) -> None:
    async with connect(f"ws://{HOST}:{server.port}/echo", max_size=None) as websocket:
        await websocket.send(b"small")
        assert await websocket.recv() == b"small"
        await websocket.send(b"w" * (LIMIT + 1))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(websocket.recv(), 10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009


async def test_a_grpc_message_over_the_limit_is_refused(server: Process) -> None:
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{server.port}") as http:
        record = (await http.get("/_micro/registry")).json()
    address = record["nodes"][0]["metadata"]["grpc"]

    def message(text: bytes) -> bytes:
        length = len(text)
        varint = bytearray()
        while True:
            byte, length = length & 0x7F, length >> 7
            varint.append(byte | (0x80 if length else 0))
            if not length:
                return b"\n" + bytes(varint) + text

    async with grpc.aio.insecure_channel(address) as channel:
        echo = channel.unary_unary("/limits.Limits/Echo")
        assert await echo(message(b"hi"), timeout=10) == message(b"hi")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await echo(message(b"g" * LIMIT), timeout=10)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# -- the service's limit under plain uvicorn ---------------------------------------------------


def small_service_app(limit: int) -> FastAPI:
    service = Service("small", registry=MemoryRegistry(), grpc=False, max_message_size=limit)
    router = MicroRouter("Limits")

    @router.rpc()
    async def echo(req: Text) -> Text:
        return req

    @router.rpc()
    async def peer(req: Text, request: Request) -> Text:
        return req

    app = FastAPI(lifespan=service.lifespan)
    app.include_router(router)

    @app.post("/upload")
    async def upload(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    @app.post("/model")
    async def model(text: Text) -> Text:
        return text

    @app.websocket("/echo")
    async def echo_socket(websocket: WebSocket) -> None:
        await websocket.accept()
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                await websocket.send(
                    {
                        "type": "websocket.send",
                        "bytes": message.get("bytes"),
                        "text": message.get("text"),
                    }
                )

    return app


@pytest.mark.parametrize("path", ["/upload", "/model", "/limits/echo", "/limits/peer"])
async def test_the_service_limit_holds_under_plain_uvicorn(path: str) -> None:
    """Each request is written whole at once: plain uvicorn resets a connection it closes
    with a body unread, and a client still sending may miss the answer."""
    limit = 1000
    fits = b'{"text":"' + b"f" * (limit - 12) + b'"}'
    async with serve(small_service_app(limit)) as address:
        port = int(address.rpartition(":")[2])
        async with httpx.AsyncClient(base_url=f"http://{address}") as http:
            response = await http.post(path, content=fits.ljust(limit), headers=JSON)
            assert response.status_code == 200, response.text

        over = fits.ljust(limit + 1)
        answer = await send_while_reading(
            port, post(path, b"content-length: %d" % len(over)) + over
        )
        assert answer.status == 413
        assert answer.json()["id"] == "small"
        assert answer.headers[b"connection"] == b"close"

        body = b"".join(chunked(2 * limit, b" " * 200))
        answer = await send_while_reading(port, post(path, b"transfer-encoding: chunked") + body)
        assert answer.status == 413
        assert answer.headers[b"connection"] == b"close"
        assert answer.json() == {
            "id": "small",
            "code": 413,
            "detail": f"request body over {limit} bytes",
            "status": "Request Entity Too Large",
        }


@pytest.mark.parametrize(
    "message", [b"b" * 1001, "t" * 1001, "\U0001f600" * 251], ids=["bytes", "text", "utf-8"]
)
async def test_the_service_limit_closes_websockets_under_plain_uvicorn(message: Any) -> None:
    """uvicorn takes 16 MiB messages unless told otherwise; the service's limit is 1000 bytes
    (251 emoji are 1004)."""
    async with (
        serve(small_service_app(1000)) as address,
        connect(f"ws://{address}/echo", max_size=None) as websocket,
    ):
        fits = message[:250]
        await websocket.send(fits)
        assert await websocket.recv() == fits
        await websocket.send(message)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(websocket.recv(), 10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009


async def test_the_protocol_takes_limits_in_process() -> None:
    """``MicroHttpProtocol.with_limits`` for ``uvicorn.Config(http=...)``."""
    port = free_port()
    protocol = MicroHttpProtocol.with_limits(ServerLimits(max_header_size=1024))
    config = uvicorn.Config(
        small_service_app(1000), host=HOST, port=port, http=protocol, log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done()
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}") as http:
            assert (await http.post("/upload", content=b"x" * 10)).status_code == 200
            response = await http.post("/upload", headers={"x-big": "b" * 1024})
            assert response.status_code == 431
    finally:
        server.should_exit = True
        await task


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="header_timeout must be positive"):
        ServerLimits(header_timeout=0)
    with pytest.raises(ValueError, match="max_message_size"):
        Service("bad", registry=MemoryRegistry(), max_message_size=-1)
