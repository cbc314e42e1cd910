"""How Python types become protobuf types: the tables and pure functions ``ProtoSchema`` uses
while it reads a model (numbering, enums, names, unwrapping annotations)."""

from __future__ import annotations

import collections.abc
import datetime as dt
import decimal
import enum
import re
import types
import typing
import uuid
from collections.abc import Sequence
from typing import Any, Literal, cast

from google.protobuf import descriptor_pb2
from pydantic.fields import FieldInfo

from .spec import EnumSpec, ProtoField, ProtoSchemaError, Scalar

__all__ = [
    "AS_STRING",
    "MAPPINGS",
    "MAX_FIELD_NUMBER",
    "RESERVED_NUMBERS",
    "SCALARS",
    "SEQUENCES",
    "UNIONS",
    "enum_spec",
    "field_numbers",
    "is_any",
    "literal",
    "map_entry_name",
    "proto_name",
    "sequence_element",
    "strip_annotated",
    "strip_optional",
    "type_name",
]

_F = descriptor_pb2.FieldDescriptorProto
RESERVED_NUMBERS = range(19000, 20000)
MAX_FIELD_NUMBER = 2**29 - 1
INT32 = range(-(2**31), 2**31)

SCALARS: dict[type, Scalar] = {
    bool: Scalar(_F.TYPE_BOOL),
    int: Scalar(_F.TYPE_INT64),
    float: Scalar(_F.TYPE_DOUBLE),
    str: Scalar(_F.TYPE_STRING),
    bytes: Scalar(_F.TYPE_BYTES),
}
# Carried as their canonical text, which pydantic parses back to the same value.
AS_STRING: dict[type, Scalar] = {
    uuid.UUID: Scalar(_F.TYPE_STRING, str, blank_is_unset=True),
    decimal.Decimal: Scalar(_F.TYPE_STRING, str, blank_is_unset=True),
    dt.time: Scalar(_F.TYPE_STRING, dt.time.isoformat, blank_is_unset=True),
    dt.date: Scalar(_F.TYPE_STRING, dt.date.isoformat, blank_is_unset=True),
}
SEQUENCES = (list, tuple, set, frozenset, collections.abc.Sequence)
MAPPINGS = (dict, collections.abc.Mapping)
UNIONS = (types.UnionType, typing.Union)


def enum_spec(enum_cls: type[enum.Enum], name: str, where: str) -> EnumSpec:
    """Number an enum's members: int values as they are, others by declaration order."""
    members = list(enum_cls)
    numbered: list[tuple[enum.Enum, int]]
    if all(type(member.value) is int for member in members):
        numbered = [(member, member.value) for member in members]
        for member, number in numbered:
            if number not in INT32:
                raise ProtoSchemaError(
                    f"{where}: {enum_cls.__name__}.{member.name} = {number} is outside int32"
                )
    else:
        # Other values are numbered by declaration order; a member named UNSPECIFIED is zero.
        zero = [member for member in members if member.name.upper() == "UNSPECIFIED"]
        rest = [member for member in members if member not in zero]
        numbered = [(member, 0) for member in zero]
        numbered += [(member, number) for number, member in enumerate(rest, start=1)]
    prefix = screaming_snake(name)
    unspecified = all(number != 0 for _, number in numbered)
    values = [(f"{prefix}_UNSPECIFIED", 0)] if unspecified else []
    values += [(f"{prefix}_{member.name.upper()}", number) for member, number in numbered]
    # proto3 wants the zero value first; a stable sort keeps declaration order after it.
    values.sort(key=lambda value: value[1] != 0)
    names = [value_name for value_name, _ in values]
    duplicates = sorted({value_name for value_name in names if names.count(value_name) > 1})
    if duplicates:
        raise ProtoSchemaError(
            f"{where}: {enum_cls.__name__} gives more than one value the protobuf name "
            f"{', '.join(duplicates)}"
        )
    numbers: dict[Any, int] = {}
    for member, number in numbered:
        numbers[member] = number
        if isinstance(member.value, collections.abc.Hashable):
            numbers.setdefault(member.value, number)
    return EnumSpec(
        enum_class=enum_cls,
        name=name,
        values=tuple(values),
        numbers=numbers,
        members={number: member for member, number in numbered},
        unspecified=unspecified,
    )


def field_numbers(model_name: str, fields: Sequence[tuple[str, FieldInfo]]) -> dict[str, int]:
    """Pinned numbers first, then 1..n in declaration order over the numbers left free."""
    pinned: dict[int, str] = {}
    for name, info in fields:
        where = f"{model_name}.{name}"
        options = [item for item in info.metadata if isinstance(item, ProtoField)]
        if len(options) > 1:
            raise ProtoSchemaError(f"{where}: more than one ProtoField")
        if not options or options[0].number is None:
            continue
        number = options[0].number
        if not 1 <= number <= MAX_FIELD_NUMBER:
            raise ProtoSchemaError(
                f"{where}: field number {number} is outside 1..{MAX_FIELD_NUMBER}"
            )
        if number in RESERVED_NUMBERS:
            raise ProtoSchemaError(
                f"{where}: field numbers 19000-19999 are reserved by protobuf, got {number}"
            )
        if number in pinned:
            raise ProtoSchemaError(
                f"{where}: field number {number} is already pinned by {model_name}.{pinned[number]}"
            )
        pinned[number] = name
    numbers = {name: number for number, name in pinned.items()}
    next_number = 1
    for name, _ in fields:
        if name not in numbers:
            while next_number in pinned:
                next_number += 1
            numbers[name] = next_number
            next_number += 1
    return numbers


def literal(where: str, tp: Any) -> Scalar:
    kinds = {type(value) for value in typing.get_args(tp)}
    kind = kinds.pop() if len(kinds) == 1 else None
    if kind not in SCALARS:
        raise ProtoSchemaError(
            f"{where}: {type_name(tp)}: a Literal needs values of one type "
            "(str, int, bool or bytes)"
        )
    return SCALARS[kind]


def strip_optional(annotation: Any, where: str) -> tuple[Any, bool]:
    """The type inside ``X | None``, and whether ``None`` is allowed."""
    tp = strip_annotated(annotation, where)
    if typing.get_origin(tp) in UNIONS:
        args = [strip_annotated(arg, where) for arg in typing.get_args(tp)]
        rest = [arg for arg in args if arg is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            return rest[0], True
        if len(rest) == len(args) - 1 and all(typing.get_origin(a) is Literal for a in rest):
            return cast(Any, Literal)[tuple(v for a in rest for v in typing.get_args(a))], True
        raise ProtoSchemaError(
            f"{where}: protobuf cannot carry the union {type_name(tp)}; "
            "only X | None (proto3 optional) is supported"
        )
    if typing.get_origin(tp) is Literal and None in typing.get_args(tp):
        values = tuple(value for value in typing.get_args(tp) if value is not None)
        return cast(Any, Literal)[values], True
    return tp, False


def strip_annotated(tp: Any, where: str) -> Any:
    while True:
        if typing.get_origin(tp) is typing.Annotated:
            if any(isinstance(item, ProtoField) for item in tp.__metadata__):
                # Pydantic only keeps the outermost Annotated's metadata: this one would be
                # ignored, and a silently unpinned field number is worse than an error.
                raise ProtoSchemaError(
                    f"{where}: ProtoField must annotate the whole field type, "
                    "as in Annotated[int | None, ProtoField(number=3)]"
                )
            tp = tp.__origin__
        elif isinstance(tp, typing.NewType):
            tp = tp.__supertype__
        else:
            return tp


def sequence_element(tp: Any, where: str) -> Any:
    args = typing.get_args(tp)
    is_tuple = typing.get_origin(tp) is tuple or tp is tuple
    if is_tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        raise ProtoSchemaError(
            f"{where}: {type_name(tp)}: only tuple[X, ...] maps to a repeated field"
        )
    return strip_annotated(args[0], where) if args else Any


def is_any(tp: Any) -> bool:
    return tp is Any or tp is object


def proto_name(name: str) -> str:
    """A class name as a protobuf identifier: ``Page[Item]`` becomes ``Page_Item``."""
    cleaned = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_")
    if not cleaned:
        raise ProtoSchemaError(f"{name!r} cannot be a protobuf name")
    return f"_{cleaned}" if cleaned[0].isdigit() else cleaned


def screaming_snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).upper()


def map_entry_name(field_name: str) -> str:
    """protoc's name for a map field's entry: ``word_counts`` -> ``WordCountsEntry``."""
    return "".join(part[:1].upper() + part[1:] for part in field_name.split("_")) + "Entry"


def type_name(tp: Any) -> str:
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return repr(tp).replace("typing.", "")
