"""Codecs, chosen by ``Content-Type`` and ``Accept``: JSON (the default) and msgpack here; the
protobuf codec plugs into the same table.

A ``MessageType`` wraps the Python type of a request or response (a pydantic model, or anything
pydantic can validate) and keeps pydantic-core's validator and serializer at hand, so JSON is
validated straight from bytes and serialised straight to bytes.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from functools import lru_cache
from typing import Any, TypeVar

import msgpack
import orjson
from pydantic import BaseModel, TypeAdapter

__all__ = [
    "CODECS",
    "JSON",
    "Codec",
    "JSONCodec",
    "MessageType",
    "MsgpackCodec",
    "codec_for_accept",
    "codec_for_content_type",
    "message_type",
    "preferred",
    "register_codec",
]

T = TypeVar("T")


class MessageType:
    """A request or response type with pydantic-core's fast paths bound once."""

    __slots__ = (
        "dump_json",
        "dump_python",
        "extension",
        "type",
        "validate_json",
        "validate_python",
    )

    def __init__(self, type_: Any) -> None:
        from google.protobuf.message import Message

        self.type = type_
        # Filled by codecs that need more than pydantic knows, e.g. protobuf descriptors.
        self.extension: dict[str, Any] = {}
        if isinstance(type_, type) and issubclass(type_, Message):
            # A generated protobuf class is no pydantic type: json_format stands in for JSON.
            from .protobuf.codec import bind_generated

            bind_generated(self)
            return
        if isinstance(type_, type) and issubclass(type_, BaseModel):
            validator, serializer = type_.__pydantic_validator__, type_.__pydantic_serializer__
        else:
            adapter = TypeAdapter(type_)
            validator, serializer = adapter.validator, adapter.serializer
        self.validate_json = validator.validate_json
        self.validate_python = validator.validate_python
        self.dump_json = serializer.to_json
        self.dump_python = serializer.to_python

    def json_schema(self) -> dict[str, Any]:
        schema = self.extension.get("json_schema")
        if schema is not None:  # e.g. a generated protobuf class, which pydantic cannot describe
            return dict(schema)
        return TypeAdapter(self.type).json_schema()

    def __repr__(self) -> str:
        return f"MessageType({getattr(self.type, '__name__', self.type)!r})"


def message_type(type_: Any) -> MessageType:
    """The ``MessageType`` of ``type_``, built once."""
    return _message_type(type_)


@lru_cache(maxsize=1024)
def _message_type(type_: Any) -> MessageType:
    return MessageType(type_)


class Codec(ABC):
    """Turns messages into bytes and back for one content type."""

    content_type: str

    @abstractmethod
    def encode(self, value: Any, message_type: MessageType | None = None) -> bytes:
        """``value`` as bytes; with a ``message_type`` it is serialised by that type."""

    @abstractmethod
    def decode(self, data: bytes, message_type: MessageType | None = None) -> Any:
        """Bytes as a value; with a ``message_type`` it is validated into that type and
        ``pydantic.ValidationError`` says which fields are wrong."""


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
        return orjson.loads(data) if data else None


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
        value = msgpack.unpackb(data, raw=False) if data else None
        if message_type is not None:
            return message_type.validate_python({} if value is None else value)
        return value


def _plain(value: Any) -> Any:
    """What JSON and msgpack cannot carry natively, as JSON-compatible values."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


JSON = JSONCodec()
CODECS: dict[str, Codec] = {
    JSON.content_type: JSON,
    "application/msgpack": MsgpackCodec(),
    "application/x-msgpack": MsgpackCodec(),
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
