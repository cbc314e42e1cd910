"""The ``application/protobuf`` codec, and generated protobuf classes as handler types.

Protobuf bytes do not say which message they hold, so the codec needs the endpoint's
``MessageType``: its converter is the one a ``ProtoSchema`` put in ``extension["protobuf"]``,
or, for a type no schema has seen (a client calling another service), one built on first use
from a schema of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from pydantic import BaseModel

from ..codec import Codec, MessageType
from ..errors import BadRequest, NotAcceptable, UnsupportedMediaType
from .convert import MessageConverter, generated_converter
from .schema import ProtoSchema, proto_package
from .spec import EXTENSION, ProtoSchemaError

__all__ = ["ProtobufCodec", "bind_generated", "message_converter"]


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
    ``asgi_micro.protobuf`` is imported."""

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


def bind_generated(message_type: MessageType) -> None:
    """Fill a ``MessageType`` of a generated protobuf class with pydantic's four functions,
    through ``google.protobuf.json_format`` (fields by their ``.proto`` names, zeros
    included), and its converter. Keyword options of pydantic's functions are accepted and
    have no effect."""
    cls: type[Message] = message_type.type

    def validate_json(input: str | bytes | bytearray, **_: Any) -> Message:
        try:
            return json_format.Parse(bytes(input) if isinstance(input, bytearray) else input, cls())
        except json_format.ParseError as exc:
            raise BadRequest(str(exc)) from exc

    def validate_python(input: Any, **_: Any) -> Message:
        if isinstance(input, cls):
            return input
        if not isinstance(input, Mapping):
            raise BadRequest(
                f"expected {cls.DESCRIPTOR.full_name} or a dict, got {type(input).__name__}"
            )
        try:
            return json_format.ParseDict(dict(input), cls())
        except json_format.ParseError as exc:
            raise BadRequest(str(exc)) from exc

    def dump_python(value: Any, **_: Any) -> Any:
        return json_format.MessageToDict(
            value,
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
            unquote_int64_if_possible=True,
        )

    def dump_json(value: Any, **_: Any) -> bytes:
        return orjson.dumps(dump_python(value))

    message_type.validate_json = validate_json
    message_type.validate_python = validate_python
    message_type.dump_json = dump_json
    message_type.dump_python = dump_python
    message_type.extension[EXTENSION] = generated_converter(cls)
    message_type.extension["json_schema"] = descriptor_json_schema(cls.DESCRIPTOR)


_JSON_TYPES = {
    FieldDescriptor.TYPE_DOUBLE: "number",
    FieldDescriptor.TYPE_FLOAT: "number",
    FieldDescriptor.TYPE_BOOL: "boolean",
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "string",
    FieldDescriptor.TYPE_ENUM: "string",
    FieldDescriptor.TYPE_MESSAGE: "object",
}


def descriptor_json_schema(descriptor: Any) -> dict[str, Any]:
    """A JSON schema of a message as ``json_format`` writes it (proto field names), one level
    deep: enough for the registry to show callers what to send."""
    properties: dict[str, Any] = {}
    field: Any
    for field in descriptor.fields:
        kind = _JSON_TYPES.get(field.type, "integer")
        spec: dict[str, Any] = {"type": kind}
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            spec["title"] = field.message_type.name
        if field.type == FieldDescriptor.TYPE_ENUM:
            spec["enum"] = [value.name for value in field.enum_type.values]
        if field.is_repeated and not (
            field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry
        ):
            spec = {"type": "array", "items": spec}
        properties[field.name] = spec
    return {"title": descriptor.name, "type": "object", "properties": properties}
