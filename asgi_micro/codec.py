"""Codecs, chosen by ``Content-Type`` and ``Accept``: JSON (the default), msgpack and protobuf.

``CODECS`` maps media types to codecs; ``register_codec`` adds one. ``MessageType`` and the
``Codec`` interface are defined in ``asgi_micro.messages`` and exported here too.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import uuid
from collections.abc import Callable
from functools import lru_cache
from typing import Any, TypeVar

import msgpack
import orjson
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from .errors import BadRequest
from .messages import Codec, MessageType, message_type
from .protobuf.codec import ProtobufCodec

__all__ = [
    "CODECS",
    "JSON",
    "MSGPACK",
    "PROTOBUF",
    "Codec",
    "JSONCodec",
    "MessageType",
    "MsgpackCodec",
    "ProtobufCodec",
    "codec_for_accept",
    "codec_for_content_type",
    "message_type",
    "preferred",
    "register_codec",
]

T = TypeVar("T")


class JSONCodec(Codec):
    content_type = "application/json"

    def encode(self, value: Any, message_type: MessageType | None = None) -> bytes:
        if message_type is not None:
            return message_type.dump_json(value)
        if isinstance(value, BaseModel):
            return value.__pydantic_serializer__.to_json(value)
        return orjson.dumps(value, default=_plain)

    def decode(self, data: bytes, message_type: MessageType | None = None) -> Any:
        if message_type is not None:
            return message_type.validate_json(data or b"{}")
        if not data:
            return None
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"invalid JSON: {exc}") from exc


class MsgpackCodec(Codec):
    content_type = "application/msgpack"

    def encode(self, value: Any, message_type: MessageType | None = None) -> bytes:
        if message_type is not None:
            value = message_type.dump_python(value)
        elif isinstance(value, BaseModel):
            value = value.model_dump()
        packed: bytes = msgpack.packb(value, default=_plain, datetime=False)
        return packed

    def decode(self, data: bytes, message_type: MessageType | None = None) -> Any:
        value = _unpack(data) if data else None
        if message_type is not None:
            return message_type.validate_python({} if value is None else value)
        return value


def _unpack(data: bytes) -> Any:
    """The one msgpack value ``data`` holds; anything else is a ``BadRequest``.

    Every length header is bounded by the size of the input (msgpack's default for ``unpackb``,
    pinned here), so a header claiming 4 GiB is refused before anything is allocated; nesting
    is bounded by msgpack's own stack. Map keys must be strings, as in JSON.
    """
    size = len(data)
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=size,
            max_bin_len=size,
            max_array_len=size,
            max_map_len=size // 2,
            max_ext_len=size,
        )
    except ValueError as exc:  # ExtraData, FormatError, StackError, UnicodeDecodeError too
        raise BadRequest(f"invalid msgpack: {_msgpack_reason(exc)}") from exc


def _msgpack_reason(exc: ValueError) -> str:
    if isinstance(exc, msgpack.ExtraData):
        return "extra bytes after the value"
    if isinstance(exc, msgpack.StackError):
        return "nested too deeply"
    if isinstance(exc, msgpack.FormatError):
        return "a reserved type byte"
    if isinstance(exc, UnicodeDecodeError):
        return f"a string is not UTF-8 ({exc.reason})"
    reason = str(exc)
    if reason == "Unpack failed: incomplete input":
        return "the input ends inside the value (truncated, or a length beyond the input)"
    key_type, is_key, _ = reason.partition(" is not allowed for map key")
    if is_key:
        return f"map keys must be strings, got {key_type}"
    return reason or type(exc).__name__


def _plain(value: Any) -> Any:
    """What JSON and msgpack cannot carry natively, as JSON-compatible values."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return to_jsonable_python(value)  # ISO 8601, as pydantic writes it in JSON
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


JSON = JSONCodec()
MSGPACK = MsgpackCodec()
PROTOBUF = ProtobufCodec()
CODECS: dict[str, Codec] = {
    JSON.content_type: JSON,
    MSGPACK.content_type: MSGPACK,
    "application/x-msgpack": MSGPACK,
    PROTOBUF.content_type: PROTOBUF,
    "application/x-protobuf": PROTOBUF,
}


def register_codec(codec: Codec, *aliases: str) -> None:
    """Serve ``codec`` for its content type and ``aliases``."""
    for content_type in (codec.content_type, *aliases):
        CODECS[content_type] = codec
    codec_for_content_type.cache_clear()
    codec_for_accept.cache_clear()


@lru_cache(maxsize=256)
def codec_for_content_type(header: str) -> Codec | None:
    """The codec for a ``Content-Type`` value; an empty header means JSON."""
    media_type = header.partition(";")[0].strip().lower()
    if not media_type:
        return JSON
    if media_type.endswith("+json"):
        return JSON
    return CODECS.get(media_type)


@lru_cache(maxsize=256)
def codec_for_accept(header: str, default: Codec = JSON) -> Codec | None:
    """The codec an ``Accept`` value prefers, ``default`` for ``*/*`` or no header, ``None`` when
    nothing offered is supported."""
    if not header.strip():
        return default
    return preferred(
        header,
        lambda media_type: (
            default if media_type in ("*/*", "application/*") else CODECS.get(media_type)
        ),
    )


def preferred(header: str, pick: Callable[[str], T | None]) -> T | None:
    """What ``pick`` gives for the media type an ``Accept`` value prefers (highest ``q``, then
    first listed) among those ``pick`` knows (lower-cased); ``None`` when it knows none."""
    best: tuple[float, int] | None = None
    chosen: T | None = None
    for position, part in enumerate(header.split(",")):
        media_type, *params = (piece.strip() for piece in part.split(";"))
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality <= 0:
            continue
        found = pick(media_type.lower())
        if found is None:
            continue
        rank = (-quality, position)
        if best is None or rank < best:
            best, chosen = rank, found
    return chosen
