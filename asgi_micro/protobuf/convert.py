"""Models to protobuf messages and back: one ``MessageConverter`` per message type.

Encoding turns the model into the upb constructor's keyword arguments (nested models as dicts,
so upb builds the whole tree in C), then ``SerializeToString``. Decoding parses with the upb
``FromString``, reads the fields into a dict and validates it with the model's pydantic-core
validator in one call, so constraints and validators run as they do for JSON. The per-model
functions are compiled once, in ``codegen.py``.

Bad input raises ``BadRequest`` (bytes that are not the message, or a field sent with another
wire type, which protobuf would otherwise keep as an unknown field and read as unset) or
pydantic's ``ValidationError`` (the message does not satisfy the model). A value that cannot be
encoded raises ``PydanticSerializationError``, as the JSON codec does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from google.protobuf import empty_pb2, json_format
from google.protobuf.message import DecodeError, Message
from pydantic import BaseModel
from pydantic_core import PydanticSerializationError

from .codegen import CompiledModel, compile_models, encode_failure, not_a_message
from .spec import ModelSpec

__all__ = ["EMPTY", "MessageConverter", "generated_converter", "model_converters"]


class MessageConverter:
    """How one message type travels.

    ``encode(value) -> bytes`` and ``decode(data) -> value`` are what a gRPC method handler
    takes as ``response_serializer`` and ``request_deserializer``; ``to_message`` and
    ``from_message`` stop at the protobuf message object.
    """

    __slots__ = ("decode", "encode", "from_message", "full_name", "message_class", "to_message")

    def __init__(
        self,
        *,
        message_class: type[Message],
        to_message: Callable[[Any], Message],
        from_message: Callable[[Message], Any],
        encode: Callable[[Any], bytes],
        decode: Callable[[bytes], Any],
    ) -> None:
        self.message_class = message_class
        self.full_name: str = message_class.DESCRIPTOR.full_name
        self.to_message = to_message
        self.from_message = from_message
        self.encode = encode
        self.decode = decode

    def __repr__(self) -> str:
        return f"MessageConverter({self.full_name!r})"


def _parse(message_class: type[Message], data: bytes) -> Message:
    try:
        return message_class.FromString(data)
    except DecodeError as exc:
        raise not_a_message(message_class, exc) from exc


def generated_converter(message_class: type[Message]) -> MessageConverter:
    """A generated protobuf class travels as it is: no conversion, protobuf's own parsing."""

    def to_message(value: Any) -> Message:
        if isinstance(value, message_class):
            return value
        if isinstance(value, Mapping):
            try:
                return json_format.ParseDict(dict(value), message_class())
            except json_format.ParseError as exc:
                raise PydanticSerializationError(str(exc)) from exc
        raise PydanticSerializationError(
            f"cannot encode {type(value).__name__} as {message_class.DESCRIPTOR.full_name}"
        )

    def encode(value: Any) -> bytes:
        return to_message(value).SerializeToString()

    def decode(data: bytes) -> Message:
        return _parse(message_class, data)

    return MessageConverter(
        message_class=message_class,
        to_message=to_message,
        from_message=lambda message: message,
        encode=encode,
        decode=decode,
    )


def _empty_converter() -> MessageConverter:
    """``None`` as ``google.protobuf.Empty``: handlers without a request or a response."""
    empty = empty_pb2.Empty

    def decode(data: bytes) -> None:
        _parse(empty, data)

    return MessageConverter(
        message_class=empty,
        to_message=lambda _: empty(),
        from_message=lambda _: None,
        encode=lambda _: b"",
        decode=decode,
    )


EMPTY = _empty_converter()


def model_converters(
    specs: Iterable[ModelSpec], classes: Mapping[type[BaseModel], type[Message]]
) -> dict[type, MessageConverter]:
    """Converters for every model of a schema."""
    return {
        model: _model_converter(model, classes[model], compiled)
        for model, compiled in compile_models(specs, classes).items()
    }


def _model_converter(
    model: type[BaseModel], message_class: type[Message], compiled: CompiledModel
) -> MessageConverter:
    validate = model.__pydantic_validator__.validate_python
    to_fields, from_fields = compiled.to_fields, compiled.from_fields

    def to_message(value: Any) -> Message:
        if not isinstance(value, model):
            value = validate(value)
        fields = to_fields(value)
        try:
            return message_class(**fields)
        except (TypeError, ValueError) as exc:
            raise encode_failure(message_class, fields, exc) from exc

    def from_message(message: Message) -> Any:
        return validate(from_fields(message), strict=False, by_name=True)

    return MessageConverter(
        message_class=message_class,
        to_message=to_message,
        from_message=from_message,
        encode=compiled.to_bytes,
        decode=compiled.from_bytes,
    )
