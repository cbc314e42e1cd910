"""Raw ASGI request and response helpers for the paths where Starlette's objects cost too much."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from .errors import BadRequest, MicroError, PayloadTooLarge
from .types import Receive, Send

__all__ = [
    "DEFAULT_MAX_BODY",
    "error_from_validation",
    "read_body",
    "send_error",
    "send_response",
    "validation_detail",
]

logger = logging.getLogger("asgi_micro")

DEFAULT_MAX_BODY = 4 * 1024 * 1024
_JSON = b"application/json"


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


def validation_detail(errors: Sequence[Any], *, skip_prefix: int = 0) -> str:
    """``"name: Field required; age: Input should be a valid integer"`` from pydantic's errors."""
    parts = []
    for error in errors:
        location = [str(part) for part in error.get("loc", ())][skip_prefix:]
        parts.append(f"{'.'.join(location) or 'body'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def error_from_validation(exc: ValidationError, *, id: str) -> BadRequest:
    return BadRequest(validation_detail(exc.errors(include_url=False)), id=id)
