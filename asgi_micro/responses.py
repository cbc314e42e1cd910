"""Raw ASGI request and response helpers for the paths where Starlette's objects cost too much."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from .codec import Codec, codec_for_content_type
from .errors import (
    InternalServerError,
    MicroError,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from .limits import DEFAULT_MAX_MESSAGE_SIZE
from .types import Receive, Scope, Send

__all__ = [
    "DEFAULT_MAX_BODY",
    "declared_length",
    "media_types",
    "read_body",
    "request_codec",
    "send_error",
    "send_failure",
    "send_response",
]

logger = logging.getLogger("asgi_micro")

DEFAULT_MAX_BODY = DEFAULT_MAX_MESSAGE_SIZE
"""The body limit of an RPC served without a service (with one, the service's limit)."""
_JSON = b"application/json"


def media_types(headers: Sequence[tuple[bytes, bytes]]) -> tuple[str, str]:
    """The request's ``Content-Type`` and ``Accept`` (``""`` when not given)."""
    content_type = accept = b""
    for header, value in headers:
        if header == b"content-type":
            content_type = value
        elif header == b"accept":
            accept = value
    return content_type.decode("latin-1"), accept.decode("latin-1")


def request_codec(content_type: str) -> Codec:
    """The codec of a request body; ``UnsupportedMediaType`` (415) when there is none."""
    codec = codec_for_content_type(content_type)
    if codec is None:
        raise UnsupportedMediaType(f"unsupported content type {content_type!r}")
    return codec


_HTTP_1 = ("1.1", "1.0")


def declared_length(scope: Scope) -> int | None:
    """The body's length as the request's headers declare it (the server delivers no more);
    ``None`` when they do not (chunked, or HTTP/2 without ``Content-Length``): what a limit
    can refuse before reading a byte of the body."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
        if name == b"transfer-encoding":
            return None
    return 0 if scope.get("http_version") in _HTTP_1 else None


async def read_body(receive: Receive, *, limit: int = DEFAULT_MAX_BODY) -> bytes:
    """The whole request body; more than ``limit`` bytes raises ``PayloadTooLarge``."""
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise PayloadTooLarge(f"request body over {limit} bytes")
        return body
    chunks = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def send_response(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = _JSON,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_error(
    send: Send, error: MicroError, *, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """Send ``error`` in Go Micro's shape; errors are always JSON, whatever was negotiated."""
    await send_response(send, error.code, error.to_json(), _JSON, headers)


async def send_failure(send: Send, exc: Exception, *, error_id: str, name: str) -> None:
    """Answer with what went wrong: a ``MicroError`` as it is (with ``error_id`` when it has
    no id), anything else as a 500 with nothing of its internals, logged under ``name``."""
    if isinstance(exc, MicroError):
        exc.id = exc.id or error_id
        await send_error(send, exc)
        return
    logger.error("%s failed", name, exc_info=exc)
    await send_error(send, InternalServerError(id=error_id))
