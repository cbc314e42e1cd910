"""The records a schema builds from models: what each field becomes in protobuf.

``schema.py`` writes them while it reads the models, ``convert.py`` compiles converters from
them and ``render.py`` prints them; nothing here touches pydantic or a descriptor pool.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from google.protobuf.descriptor import FieldDescriptor
from pydantic import BaseModel

__all__ = [
    "EXTENSION",
    "SCALAR_NAMES",
    "EnumSpec",
    "FieldSpec",
    "MessageRef",
    "ModelSpec",
    "ProtoField",
    "ProtoSchemaError",
    "Scalar",
]


EXTENSION = "protobuf"
"""The key of ``MessageType.extension`` that holds the type's ``MessageConverter``."""

SCALAR_NAMES: dict[int, str] = {
    FieldDescriptor.TYPE_DOUBLE: "double",
    FieldDescriptor.TYPE_FLOAT: "float",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_FIXED64: "fixed64",
    FieldDescriptor.TYPE_FIXED32: "fixed32",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_SFIXED32: "sfixed32",
    FieldDescriptor.TYPE_SFIXED64: "sfixed64",
    FieldDescriptor.TYPE_SINT32: "sint32",
    FieldDescriptor.TYPE_SINT64: "sint64",
}
"""protobuf's names of its scalar types, by ``FieldDescriptor.TYPE_*``."""


class ProtoSchemaError(TypeError):
    """A model or service that protobuf cannot describe, or a schema change that would break
    clients. Raised at start-up and never sent over the wire; a ``TypeError`` like pydantic's
    own schema errors."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ProtoField:
    """Protobuf options of one model field: ``Annotated[int, ProtoField(number=7)]``."""

    number: int | None = None


@dataclass(frozen=True, slots=True)
class Scalar:
    """A protobuf scalar. ``to_wire`` turns the Python value into it (``None``: as it is);
    ``blank_is_unset`` reads ``""`` as "not given" (UUID, Decimal, date and time, for which the
    empty string is never a valid value)."""

    proto_type: int
    to_wire: Callable[[Any], Any] | None = None
    blank_is_unset: bool = False


@dataclass(frozen=True, slots=True)
class MessageRef:
    """A message-typed field: a model of the schema, or a well-known type by its short name."""

    full_name: str
    model: type[BaseModel] | None = None
    well_known: str | None = None


@dataclass(frozen=True, slots=True)
class EnumSpec:
    """A Python enum as a protobuf enum.

    ``numbers`` maps members (and their values, which models with ``use_enum_values`` store) to
    numbers and ``members`` maps numbers back. ``unspecified`` is true when no member has the
    number 0 and ``<NAME>_UNSPECIFIED = 0`` was added; it then means "not given".
    """

    enum_class: type[enum.Enum]
    name: str
    values: tuple[tuple[str, int], ...]
    numbers: dict[Any, int]
    members: dict[int, enum.Enum]
    unspecified: bool


FieldValue = Scalar | EnumSpec | MessageRef


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One model field. ``optional`` is proto3 ``optional`` (a nullable scalar or enum that keeps
    its presence on the wire); ``nullable`` says the model accepts ``None``; ``defaulted`` is
    proto3 ``optional`` too, for a scalar or enum whose default is not the wire's zero value: a
    caller that leaves it out gets the model's default, not the zero value."""

    name: str
    number: int
    value: FieldValue
    shape: Literal["singular", "repeated", "map"] = "singular"
    key: Scalar | None = None
    optional: bool = False
    nullable: bool = False
    defaulted: bool = False


@dataclass(slots=True)
class ModelSpec:
    model: type[BaseModel]
    name: str
    fields: list[FieldSpec] = field(default_factory=list)
