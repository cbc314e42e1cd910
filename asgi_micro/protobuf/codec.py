"""The ``application/protobuf`` codec.

Protobuf bytes do not say which message they hold, so the codec needs the endpoint's
``MessageType``: its converter is the one a ``ProtoSchema`` put in ``extension["protobuf"]``,
or, for a type no schema has seen (a client calling another service), one built on first use
from a schema of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf.message import Message
from pydantic import BaseModel

from ..errors import NotAcceptable, UnsupportedMediaType
from ..messages import Codec, MessageType
from .convert import MessageConverter, generated_converter
from .schema import ProtoSchema, proto_package
from .spec import EXTENSION, ProtoSchemaError

__all__ = ["ProtobufCodec", "message_converter"]


def message_converter(message_type: MessageType) -> MessageConverter:
    """The converter of ``message_type``, built once and kept in its ``extension``."""
    converter: MessageConverter | None = message_type.extension.get(EXTENSION)
    if converter is None:
        type_ = message_type.type
        if isinstance(type_, type) and issubclass(type_, Message):
            converter = generated_converter(type_)
        else:
            # A schema of its own: names only matter inside a pool, and this one holds the
            # type (and what it refers to) alone.
            schema = ProtoSchema(package=proto_package(getattr(type_, "__module__", "local")))
            schema.add_message(type_)
            converter = schema.converter(type_)
        message_type.extension[EXTENSION] = converter
    return converter


class ProtobufCodec(Codec):
    """``application/protobuf`` (alias ``application/x-protobuf``), registered when
    in ``asgi_micro.codec``'s table."""

    content_type = "application/protobuf"

    def __init__(self) -> None:
        self._by_model: dict[type[BaseModel], MessageType] = {}

    def encode(self, value: Any, message_type: MessageType | None = None) -> bytes:
        if message_type is None:
            if isinstance(value, Message):
                return value.SerializeToString()
            if value is None or (isinstance(value, Mapping) and not value):
                return b""
            if not isinstance(value, BaseModel):
                raise NotAcceptable(
                    f"{type(value).__name__} has no protobuf message type; "
                    "use a pydantic model or a generated protobuf class"
                )
            message_type = self._by_model.get(type(value))
            if message_type is None:
                message_type = self._by_model[type(value)] = MessageType(type(value))
        try:
            converter = message_converter(message_type)
        except ProtoSchemaError as exc:
            raise NotAcceptable(f"cannot reply in protobuf: {exc}") from exc
        return converter.encode(value)

    def decode(self, data: bytes, message_type: MessageType | None = None) -> Any:
        if message_type is None:
            raise UnsupportedMediaType(
                "protobuf bytes do not say which message they hold, and this endpoint declares "
                "no message type; send JSON"
            )
        try:
            converter = message_converter(message_type)
        except ProtoSchemaError as exc:
            raise UnsupportedMediaType(f"this endpoint does not take protobuf: {exc}") from exc
        return converter.decode(data)
