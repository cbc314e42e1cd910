"""HTTP for streaming RPC handlers: one handler streams over gRPC and over HTTP.

An async-generator handler streams its replies as NDJSON or Server-Sent Events, chosen by
``Accept``; a handler taking ``AsyncIterator[Request]`` is a WebSocket at the same path. Either
side going away cancels the handler. See ``docs/streaming.md`` for the wire formats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

import orjson
from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from .codec import JSON, MSGPACK, PROTOBUF, MessageType, preferred
from .context import Context, current_context, read_headers, within_deadline
from .errors import (
    BadRequest,
    InternalServerError,
    MicroError,
    NotAcceptable,
    Timeout,
)
from .pipeline import Call, standalone
from .responses import (
    DEFAULT_MAX_BODY,
    media_types,
    read_body,
    request_codec,
    send_error,
    send_failure,
)
from .rpc import RPC
from .state import service_of
from .types import Receive, Scope, Send

__all__ = [
    "END_OF_STREAM",
    "NDJSON",
    "SSE",
    "WEBSOCKET_CODECS",
    "StreamFormat",
    "serve_stream",
    "serve_websocket",
    "stream_format",
    "websocket_endpoint",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StreamFormat:
    """How a stream of replies is framed in an HTTP response body."""

    content_type: bytes
    item: Callable[[bytes], bytes]
    error: Callable[[MicroError], bytes]
    headers: tuple[tuple[bytes, bytes], ...] = ()


NDJSON = StreamFormat(
    b"application/x-ndjson",
    item=lambda payload: payload + b"\n",
    # A failure after the first reply: one last line, {"error": {...}} in Go Micro's shape.
    error=lambda error: b'{"error":' + error.to_json() + b"}\n",
)
SSE = StreamFormat(
    b"text/event-stream",
    item=lambda payload: b"data: " + payload + b"\n\n",
    error=lambda error: b"event: error\ndata: " + error.to_json() + b"\n\n",
    # Proxies must pass each event on as it comes.
    headers=((b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")),
)
_STREAM_FORMATS = {
    "text/event-stream": SSE,
    "application/x-ndjson": NDJSON,
    "application/jsonl": NDJSON,
    "application/json": NDJSON,
    "application/*": NDJSON,
    "*/*": NDJSON,
}


@lru_cache(maxsize=64)
def stream_format(accept: str) -> StreamFormat | None:
    """NDJSON or SSE, as ``Accept`` prefers; NDJSON without a preference, ``None`` when
    neither is acceptable."""
    if not accept.strip():
        return NDJSON
    return preferred(accept, _STREAM_FORMATS.get)


class _Replies:
    """Writes replies in a ``StreamFormat``. The status goes out with the first reply, so that a
    handler failing before it gets a plain error response."""

    __slots__ = ("error_id", "finished", "format", "response", "send", "started")

    def __init__(
        self, send: Send, format: StreamFormat, response: MessageType | None, error_id: str
    ) -> None:
        self.send = send
        self.format = format
        self.response = response
        self.error_id = error_id
        self.started = False
        self.finished = False

    async def write(self, item: Any) -> None:
        response = self.response
        if response is None:
            payload = b"{}"
        else:
            if not isinstance(item, response.type):
                item = response.validate_python(item)
            payload = response.dump_json(item)
        if not self.started:
            await self._start()
        await self.send(
            {"type": "http.response.body", "body": self.format.item(payload), "more_body": True}
        )

    async def finish(self) -> None:
        if not self.started:
            await self._start()
        self.finished = True
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    async def fail(self, error: MicroError) -> None:
        if self.finished:
            return
        self.finished = True
        error.id = error.id or self.error_id
        if not self.started:
            await send_error(self.send, error)
            return
        await self.send(
            {"type": "http.response.body", "body": self.format.error(error), "more_body": False}
        )

    async def _start(self) -> None:
        self.started = True
        await self.send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", self.format.content_type), *self.format.headers],
            }
        )


async def serve_stream(
    rpc: RPC, scope: Scope, receive: Receive, send: Send, *, limit: int = DEFAULT_MAX_BODY
) -> None:
    """Serve a server-streaming RPC over HTTP: one request in the body (any codec), the replies
    as NDJSON or Server-Sent Events."""
    host = service_of(scope)
    error_id = host.name if host else rpc.name
    content_type, accept = media_types(scope["headers"])
    try:
        codec = request_codec(content_type)
        format = stream_format(accept)
        if format is None:
            raise NotAcceptable(f"{rpc.name} streams NDJSON or text/event-stream, not {accept!r}")
        body = await read_body(receive, limit=limit)
        try:
            request = codec.decode(body, rpc.request) if rpc.request is not None else None
        except ValidationError as exc:
            raise BadRequest.from_validation(exc, id=error_id) from None
        context = current_context()  # MicroMiddleware's, whose deadline it enforces
        own = context is None
        if context is None:
            context = read_headers(scope["headers"]) or Context()
    except Exception as exc:
        await send_failure(send, exc, error_id=error_id, name=rpc.name)
        return
    replies = _Replies(send, format, rpc.response, error_id)
    call = Call(
        rpc.name,
        "http",
        context,
        host=host,
        request=request,
        kind=rpc.kind,
        content_type=format.content_type.decode(),
        rpc=rpc,
        write=replies.write,
    )
    handler = host.pipeline.handler(rpc) if host is not None else standalone(rpc)
    try:
        done = await _run_until_gone(
            within_deadline(context, handler(call)) if own else handler(call),
            _http_disconnect(receive),
        )
    except asyncio.CancelledError:
        # MicroMiddleware's deadline; the error goes in-band when replies have begun.
        if context.expired():
            await replies.fail(Timeout("deadline exceeded"))
        raise
    if done is None:
        return  # the client went away
    await _conclude(done, replies.finish, replies.fail, rpc.name)


async def _http_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _run_until_gone(
    work: Awaitable[T], gone: Coroutine[Any, Any, None]
) -> asyncio.Future[T] | None:
    """Run ``work`` until it ends, or until ``gone`` (which returns when the peer disconnects)
    returns first: ``work`` is then cancelled, its ``finally`` blocks run, and the result is
    ``None``. Cancelling the caller cancels both."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.create_task(gone)
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (watcher, task):
            if not pending.done():
                pending.cancel()
                await asyncio.wait((pending,))
    return None if task.cancelled() else task


async def _conclude(
    done: asyncio.Future[Any],
    finish: Callable[[], Awaitable[None]],
    fail: Callable[[MicroError], Awaitable[None]],
    name: str,
) -> None:
    error = done.exception()
    if error is None:
        await finish()
    elif isinstance(error, MicroError):
        await fail(error)
    else:
        logger.error("%s failed", name, exc_info=error)
        await fail(InternalServerError())


# -- streams of requests: WebSocket -----------------------------------------------------------

WEBSOCKET_CODECS = {"json": JSON, "msgpack": MSGPACK, "protobuf": PROTOBUF}
"""WebSocket subprotocols and their codecs."""
END_OF_STREAM = ""
"""The text frame that ends a stream of requests."""
_CLOSE_REASON_MAX = 123


def websocket_endpoint(rpc: RPC) -> Callable[[WebSocket], Awaitable[None]]:
    """The WebSocket endpoint of a client- or bidirectional-streaming RPC.

    Each frame is one message: text frames are JSON, binary frames are in the codec of the
    subprotocol (``json``, ``msgpack`` or ``protobuf``; default ``json``), and replies are
    written in that codec. An empty text frame ends the stream of requests. The server closes
    with 1000 after the last reply, or with ``4000 + code`` and the error as JSON in the reason
    (``4400`` for a ``BadRequest``...). Closing the socket cancels the handler. It is a FastAPI
    WebSocket route, so dependencies of the router and its inclusion run first.
    """

    async def endpoint(websocket: WebSocket) -> None:
        await serve_websocket(rpc, websocket)

    endpoint.__name__ = rpc.method
    endpoint.rpc = rpc  # type: ignore[attr-defined]  # rpc_of() finds it in FastAPI's copies
    return endpoint


async def serve_websocket(rpc: RPC, websocket: WebSocket) -> None:
    scope = websocket.scope
    subprotocol = next((p for p in scope.get("subprotocols", ()) if p in WEBSOCKET_CODECS), None)
    codec = WEBSOCKET_CODECS[subprotocol or "json"]
    await websocket.accept(subprotocol=subprotocol)
    host = service_of(scope)
    error_id = host.name if host else rpc.name
    context = current_context()  # MicroMiddleware's, whose deadline it enforces
    own = context is None
    if context is None:
        context = Context.from_headers(scope["headers"])
    frames: asyncio.Queue[str | bytes] = asyncio.Queue(maxsize=32)
    request_type, response_type = rpc.request, rpc.response

    async def requests() -> AsyncIterator[Any]:
        while (frame := await frames.get()) is not END_OF_STREAM:
            try:
                if isinstance(frame, str):
                    yield JSON.decode(frame.encode(), request_type)
                else:
                    yield codec.decode(frame, request_type)
            except ValidationError as exc:
                raise BadRequest.from_validation(exc, id=error_id) from None

    async def reply(item: Any) -> None:
        if response_type is None:
            payload = codec.encode({})
        else:
            if not isinstance(item, response_type.type):
                item = response_type.validate_python(item)
            payload = codec.encode(item, response_type)
        if codec is JSON:
            await websocket.send({"type": "websocket.send", "text": payload.decode()})
        else:
            await websocket.send({"type": "websocket.send", "bytes": payload})

    call = Call(
        rpc.name,
        "websocket",
        context,
        host=host,
        request=requests(),
        kind=rpc.kind,
        content_type=codec.content_type,
        rpc=rpc,
        write=reply,
    )
    handler = host.pipeline.handler(rpc) if host is not None else standalone(rpc)

    async def work() -> None:
        result = await handler(call)
        if not rpc.server_streaming:
            await reply(result)

    async def read() -> None:
        ended = False
        while (message := await websocket.receive())["type"] != "websocket.disconnect":
            if ended:
                continue  # frames after the end of the stream carry nothing
            frame: str | bytes | None = message.get("bytes")
            if frame is None:
                frame = message.get("text") or END_OF_STREAM
                ended = frame is END_OF_STREAM
            await frames.put(frame)  # backpressure: the handler reads at its own pace

    async def close(code: int = 1000, reason: str = "") -> None:
        if websocket.client_state is not WebSocketState.DISCONNECTED:
            with contextlib.suppress(WebSocketDisconnect):
                await websocket.send({"type": "websocket.close", "code": code, "reason": reason})

    async def fail(error: MicroError) -> None:
        error.id = error.id or error_id
        await close(4000 + error.code, _close_reason(error))

    try:
        done = await _run_until_gone(within_deadline(context, work()) if own else work(), read())
    except asyncio.CancelledError:
        if context.expired():  # MicroMiddleware's deadline
            await fail(Timeout("deadline exceeded"))
        raise
    if done is None or isinstance(done.exception(), WebSocketDisconnect):
        return  # the client went away
    await _conclude(done, close, fail, rpc.name)


def _close_reason(error: MicroError) -> str:
    """The error as JSON within a close frame's 123 bytes, its detail shortened to fit."""
    data = error.to_dict()
    reason = orjson.dumps(data)
    if len(reason) > _CLOSE_REASON_MAX:
        # Each character is at least one byte of JSON, so cutting the excess in characters fits.
        detail = data["detail"]
        data["detail"] = detail[: max(0, len(detail) - (len(reason) - _CLOSE_REASON_MAX) - 3)]
        data["detail"] += "..."
        reason = orjson.dumps(data)
    if len(reason) > _CLOSE_REASON_MAX:  # an id too long to leave room for anything else
        reason = orjson.dumps({"code": error.code})
    return reason.decode()
