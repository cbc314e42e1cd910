"""Per-model functions between models and protobuf messages, compiled from generated source.

For each model two functions are written out field by field, as ``dataclasses`` writes
``__init__``: ``encode_<n>(model)`` returns the keyword arguments of the upb message constructor
(nested models as dicts, so upb builds the whole tree in C) and ``decode_<n>(message)`` returns
the dict the model's validator takes. Straight-line code with no per-field calls costs a third
less than walking field tables; every per-call microsecond shows next to grpc's own ~340 us.

Field names go into the source as attribute names, which the schema checked (ASCII
identifiers, no keywords). Everything else the source refers to is bound in one namespace per
schema and looked up when called, so models may refer to each other and to themselves.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet
from pydantic import BaseModel
from pydantic_core import PydanticSerializationError

from ..errors import BadRequest
from .spec import SCALAR_NAMES, EnumSpec, FieldSpec, FieldValue, ModelSpec, Scalar

__all__ = ["Fields", "compile_models"]

Fields = dict[str, Any]
Encode = Callable[[BaseModel], Fields]
Decode = Callable[[Message], Fields]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_NAIVE_EPOCH = dt.datetime(1970, 1, 1)
_MAX_EXACT_INT = 2**53
_WIRE_TYPES = {0: "varint", 1: "64-bit", 2: "length-delimited", 5: "32-bit"}


def compile_models(
    specs: Iterable[ModelSpec], classes: Mapping[type[BaseModel], type[Message]]
) -> dict[type[BaseModel], CompiledModel]:
    """The functions of every model of a schema: model to fields and back, and the whole way
    between model and bytes, which the gRPC hot path calls once per message."""
    specs = list(specs)
    writer = _Writer({spec.model: index for index, spec in enumerate(specs)})
    for spec in specs:
        flat_encode = writer.encoder(spec)
        flat_decode = writer.decoder(spec)
        writer.wire(spec, classes[spec.model], flat_encode, flat_decode)
    namespace = writer.namespace
    exec(compile("\n".join(writer.lines), "<asgi_micro.protobuf.codegen>", "exec"), namespace)
    return {
        spec.model: CompiledModel(
            *(
                namespace[f"{kind}_{index}"]
                for kind in ("encode", "decode", "to_bytes", "from_bytes")
            )
        )
        for index, spec in enumerate(specs)
    }


_COMPILED = ("encode", "decode", "to_bytes", "from_bytes")


class CompiledModel(NamedTuple):
    to_fields: Encode
    from_fields: Decode
    to_bytes: Callable[[Any], bytes]
    from_bytes: Callable[[bytes], Any]


class _Writer:
    def __init__(self, models: Mapping[type[BaseModel], int]) -> None:
        self.models = models
        self.lines: list[str] = []
        self.namespace: dict[str, Any] = {
            "UnknownFieldSet": UnknownFieldSet,
            "check_wire_types": _check_wire_types,
            "encode_error": _encode_error,
            "encode_failure": encode_failure,
            "not_a_message": not_a_message,
            "DecodeError": DecodeError,
            "ENCODE_ERRORS": (TypeError, ValueError, KeyError, AttributeError),
        }

    def bind(self, value: Any, hint: str) -> str:
        """A name in the generated source for ``value``."""
        name = f"{hint}_{len(self.namespace)}"
        self.namespace[name] = value
        return name

    # -- encoding ---------------------------------------------------------------------------

    def encoder(self, spec: ModelSpec) -> list[str] | None:
        """Writes ``encode_N``; returns the field names when every field passes as it is."""
        plain: list[str] = []
        body: list[str] = []
        for field in spec.fields:
            singular = field.shape == "singular"
            convert = self.encode_expression(
                field.value, "item" if singular else "element", in_map=field.shape == "map"
            )
            if convert is None:
                plain.append(f"{field.name!r}: values[{field.name!r}]")
                continue
            if field.shape == "repeated":
                convert = f"[{convert} for element in item]"
            elif field.shape == "map":
                convert = f"{{key: {convert} for key, element in item.items()}}"
            model = repr(spec.model.__name__)
            # None means "not set", except in a google.protobuf.Value, where it is null.
            keeps_none = getattr(field.value, "well_known", None) == "Value"
            guard = "if True:" if keeps_none else "if item is not None:"
            body += [
                f"    item = values[{field.name!r}]",
                f"    {guard}",
                "        try:",
                f"            fields[{field.name!r}] = {convert}",
                "        except ENCODE_ERRORS as exc:",
                f"            raise encode_error({model}, {field.name!r}, item, exc) from exc",
            ]
        index = self.models[spec.model]
        self.lines += [
            f"def encode_{index}(value):",
            "    values = value.__dict__",
            # upb reads None as "not set", so plain fields pass through as they are.
            f"    fields = {{{', '.join(plain)}}}",
            *body,
            "    return fields",
        ]
        return None if body else [field.name for field in spec.fields]

    def encode_expression(self, value: FieldValue, name: str, *, in_map: bool) -> str | None:
        """How one value becomes what upb takes; ``None`` when upb takes it as it is. upb fills
        a Struct from a dict and a ListValue from a list, except as a map's value, where a dict
        means the message's fields."""
        if isinstance(value, Scalar):
            if value.to_wire is None:
                return None
            return f"{self.bind(value.to_wire, 'to_wire')}({name})"
        if isinstance(value, EnumSpec):
            return f"{self.bind(value.numbers, 'numbers')}[{name}]"
        if value.model is not None:
            return f"encode_{self.models[value.model]}({name})"
        match value.well_known:
            case "Timestamp":
                return f"{self.bind(_timestamp_fields, 'timestamp')}({name})"
            case "Duration":
                return f"{self.bind(_duration_fields, 'duration')}({name})"
            case "Value":
                return f"{self.bind(_value_fields, 'value')}({name})"
            case "Struct" if in_map:
                return f"{self.bind(_struct_fields, 'struct')}({name})"
            case "ListValue" if in_map:
                return f"{self.bind(_list_value_fields, 'list_value')}({name})"
        return None

    # -- decoding ---------------------------------------------------------------------------

    def decoder(self, spec: ModelSpec) -> list[str] | None:
        """Writes ``decode_N``; returns its dict items when every field is one expression
        (``from_bytes_N`` then builds the dict itself, saving a call)."""
        items: list[str] = []  # fields always present: one expression each
        body: list[str] = []  # fields that may be left out, for the model's default
        for field in spec.fields:
            name = field.name
            read = f"message.{name}"
            convert = self.decode_expression(
                field.value, read if field.shape == "singular" else "element"
            )
            if field.shape == "repeated":
                # Slicing a repeated field gives a list in one C call, twice as fast as list().
                value = f"{read}[:]" if convert is None else f"[{convert} for element in {read}[:]]"
                items.append(f"{name!r}: {value}")
            elif field.shape == "map":
                value = (
                    f"dict({read})"
                    if convert is None
                    else f"{{key: {convert} for key, element in {read}.items()}}"
                )
                items.append(f"{name!r}: {value}")
            elif isinstance(field.value, EnumSpec):
                body += self.enum_reader(field, field.value)
            elif convert is not None:
                # Messages have presence: unset is None when the model allows it, else the
                # model's default applies (or its "field required" error).
                if field.nullable:
                    items.append(f"{name!r}: {convert} if message.HasField({name!r}) else None")
                else:
                    body += [
                        f"    if message.HasField({name!r}):",
                        f"        fields[{name!r}] = {convert}",
                    ]
            elif field.optional:
                items.append(f"{name!r}: {read} if message.HasField({name!r}) else None")
            elif field.defaulted:  # left out: the model's default, not the zero value
                body += [
                    f"    if message.HasField({name!r}):",
                    f"        fields[{name!r}] = {read}",
                ]
            elif isinstance(field.value, Scalar) and field.value.blank_is_unset:
                # "" is no UUID, Decimal, date or time: a client left the field out.
                body += [f"    text = {read}", "    if text:", f"        fields[{name!r}] = text"]
            else:
                items.append(f"{name!r}: {read}")
        index = self.models[spec.model]
        known = self.bind({field.number: field.name for field in spec.fields}, "known")
        self.lines += [
            f"def decode_{index}(message):",
            "    if UnknownFieldSet(message):",
            f"        check_wire_types(message, {known}, {spec.name!r})",
            f"    fields = {{{', '.join(items)}}}",
            *body,
            "    return fields",
        ]
        return None if body else items

    def wire(
        self,
        spec: ModelSpec,
        message_class: type[Message],
        flat_encode: list[str] | None,
        flat_decode: list[str] | None,
    ) -> None:
        """``to_bytes_N`` and ``from_bytes_N``: in one function each, since every call level
        and intermediate dict costs several times over end to end on a gRPC call."""
        index = self.models[spec.model]
        model = self.bind(spec.model, "model")
        message = self.bind(message_class, "message")
        validate = self.bind(spec.model.__pydantic_validator__.validate_python, "validate")
        from_string = self.bind(message_class.FromString, "from_string")
        if flat_encode is not None:
            keywords = ", ".join(f"{name}=values[{name!r}]" for name in flat_encode)
            build = [
                "    values = value.__dict__",
                f"    return {message}({keywords}).SerializeToString()",
            ]
        else:
            build = [f"    return {message}(**encode_{index}(value)).SerializeToString()"]
        self.lines += [
            f"def to_bytes_{index}(value):",
            f"    if not isinstance(value, {model}):",
            f"        value = {validate}(value)",
            "    try:",
            *("    " + line for line in build),
            "    except (TypeError, ValueError) as exc:",
            f"        raise encode_failure({message}, encode_{index}(value), exc) from exc",
            f"def from_bytes_{index}(data):",
            "    try:",
            f"        message = {from_string}(data)",
            "    except DecodeError as exc:",
            f"        raise not_a_message({message}, exc) from exc",
        ]
        # The wire is typed, so lax mode only ever parses our own text forms (UUID, Decimal,
        # enum values); by_name reads fields by name whatever the model's aliases. Neither
        # option is passed when it changes nothing: keyword arguments cost on every call.
        options = _validate_options(spec.model)
        if flat_decode is not None:
            known = self.bind({field.number: field.name for field in spec.fields}, "known")
            self.lines += [
                "    if UnknownFieldSet(message):",
                f"        check_wire_types(message, {known}, {spec.name!r})",
                f"    return {validate}({{{', '.join(flat_decode)}}}{options})",
            ]
        else:
            self.lines.append(f"    return {validate}(decode_{index}(message){options})")

    def enum_reader(self, field: FieldSpec, spec: EnumSpec) -> list[str]:
        """An unknown number stays an int for the validator to reject; the generated
        ``<NAME>_UNSPECIFIED`` means "not given"."""
        name = field.name
        members = self.bind(spec.members, "members")
        lookup = f"{members}.get(number, number)"
        if field.optional:
            value = f"{lookup} if number else None" if spec.unspecified else lookup
            return [
                f"    if message.HasField({name!r}):",
                f"        number = message.{name}",
                f"        fields[{name!r}] = {value}",
                "    else:",
                f"        fields[{name!r}] = None",
            ]
        if field.defaulted:
            return [
                f"    if message.HasField({name!r}):",
                f"        number = message.{name}",
                f"        fields[{name!r}] = {lookup}",
            ]
        lines = [f"    number = message.{name}"]
        if spec.unspecified:
            return [*lines, "    if number:", f"        fields[{name!r}] = {lookup}"]
        return [*lines, f"    fields[{name!r}] = {lookup}"]

    def decode_expression(self, value: FieldValue, name: str) -> str | None:
        if isinstance(value, Scalar):
            return None
        if isinstance(value, EnumSpec):
            return f"{self.bind(value.members, 'members')}.get({name}, {name})"
        if value.model is not None:
            return f"decode_{self.models[value.model]}({name})"
        decode = _WELL_KNOWN_DECODERS[value.well_known or ""]
        return f"{self.bind(decode, value.well_known or '')}({name})"


def _encode_error(
    model: str, field: str, value: Any, error: Exception
) -> PydanticSerializationError:
    if isinstance(error, PydanticSerializationError):
        return PydanticSerializationError(f"{model}.{field}: {error}")
    return PydanticSerializationError(f"{model}.{field}: cannot encode {value!r}: {error}")


def _validate_options(model: type[BaseModel]) -> str:
    """The keyword arguments decoding must pass to the model's validator."""
    options = []
    if model.model_config.get("strict"):
        options.append("strict=False")
    if any(
        field.alias is not None or field.validation_alias is not None
        for field in model.model_fields.values()
    ):
        options.append("by_name=True")
    return "".join(f", {option}" for option in options)


def encode_failure(
    message_class: type[Message], fields: Fields, error: Exception
) -> PydanticSerializationError:
    """Name the field upb refused; it says what was wrong but not where."""
    name = message_class.DESCRIPTOR.name
    for field_name, value in fields.items():
        try:
            message_class(**{field_name: value})
        except (TypeError, ValueError) as exc:
            return PydanticSerializationError(
                f"{name}.{field_name}: cannot encode {value!r}: {exc}"
            )
    return PydanticSerializationError(f"{name}: {error}")


def not_a_message(message_class: type[Message], error: DecodeError) -> BadRequest:
    return BadRequest(
        f"the body is not a valid {message_class.DESCRIPTOR.full_name} message: {error}"
    )


def _check_wire_types(message: Message, known: Mapping[int, str], model_name: str) -> None:
    """upb keeps a field whose wire type does not match as an unknown field and reads the field
    as unset; for a field we know that is a malformed message, not a newer client's field."""
    unknowns = UnknownFieldSet(message)
    for index in range(len(unknowns)):
        unknown = unknowns[index]
        name = known.get(unknown.field_number)
        if name is not None:
            field = message.DESCRIPTOR.fields_by_number[unknown.field_number]
            expected = (
                "message"
                if field.type == FieldDescriptor.TYPE_MESSAGE
                else SCALAR_NAMES.get(field.type, "enum")
            )
            raise BadRequest(
                f"{model_name}.{name} (field {unknown.field_number}) was sent as "
                f"{_WIRE_TYPES.get(unknown.wire_type, unknown.wire_type)}, which does not "
                f"match its type ({expected})"
            )


def _timestamp_fields(value: dt.datetime) -> Fields:
    # A naive datetime is read as UTC, never as the server's local time.
    delta = value - (_NAIVE_EPOCH if value.tzinfo is None else _EPOCH)
    return {"seconds": delta.days * 86400 + delta.seconds, "nanos": delta.microseconds * 1000}


def _duration_fields(value: dt.timedelta) -> Fields:
    # Duration wants seconds and nanos of one sign; timedelta keeps only its days negative.
    micros = (value.days * 86400 + value.seconds) * 1_000_000 + value.microseconds
    seconds, rest = divmod(abs(micros), 1_000_000)
    sign = -1 if micros < 0 else 1
    return {"seconds": sign * seconds, "nanos": sign * rest * 1000}


def _value_fields(value: Any) -> Fields:
    if value is None:
        return {"null_value": 0}
    if isinstance(value, bool):
        return {"bool_value": value}
    if isinstance(value, int | float):
        return {"number_value": value}
    if isinstance(value, str):
        return {"string_value": value}
    if isinstance(value, Mapping):
        return {"struct_value": value}
    if isinstance(value, list | tuple):
        return {"list_value": value}
    raise TypeError(f"a google.protobuf.Value cannot hold {type(value).__name__}")


def _struct_fields(value: Mapping[str, Any]) -> Fields:
    return {"fields": {key: _value_fields(item) for key, item in value.items()}}


def _list_value_fields(value: Iterable[Any]) -> Fields:
    return {"values": [_value_fields(item) for item in value]}


def _datetime(timestamp: Any) -> dt.datetime:
    # Python keeps microseconds: finer nanoseconds from other languages are truncated.
    try:
        return _EPOCH + dt.timedelta(0, timestamp.seconds, timestamp.nanos // 1000)
    except OverflowError as exc:  # the wire allows any int64; datetime ends at year 9999
        raise BadRequest(f"Timestamp seconds={timestamp.seconds} is out of range") from exc


def _timedelta(duration: Any) -> dt.timedelta:
    try:
        return dt.timedelta(0, duration.seconds, int(duration.nanos / 1000))
    except OverflowError as exc:  # timedelta ends at 999999999 days
        raise BadRequest(f"Duration seconds={duration.seconds} is out of range") from exc


def _python(value: Any) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number: float = value.number_value
        # Struct numbers are doubles; whole ones come back as int, as a JSON reader gives them.
        if number.is_integer() and -_MAX_EXACT_INT <= number <= _MAX_EXACT_INT:
            return int(number)
        return number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return _dict(value.struct_value)
    if kind == "list_value":
        return _list(value.list_value)
    return None


def _dict(struct: Any) -> dict[str, Any]:
    return {key: _python(item) for key, item in struct.fields.items()}


def _list(list_value: Any) -> list[Any]:
    return [_python(item) for item in list_value.values]


_WELL_KNOWN_DECODERS: dict[str, Callable[[Any], Any]] = {
    "Timestamp": _datetime,
    "Duration": _timedelta,
    "Struct": _dict,
    "ListValue": _list,
    "Value": _python,
}
