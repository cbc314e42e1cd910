"""Protobuf descriptors built at run time from pydantic models.

A ``ProtoSchema`` is one protobuf package: it collects the messages of the models it is given
(following nested models and enums) and the services with their methods, then builds one
``FileDescriptorProto`` into its own ``DescriptorPool``, so two schemas never see each other's
names. Generated protobuf classes are imported into the pool as they are.

Field numbers follow declaration order, 1..n; ``Annotated[int, ProtoField(number=7)]`` pins one
and unpinned fields take the lowest numbers left free. A type protobuf cannot carry fails when
the model is added, naming ``Model.field``.
"""

from __future__ import annotations

import datetime as dt
import enum
import keyword
import re
import typing
from collections.abc import Iterable
from dataclasses import KW_ONLY, dataclass
from typing import Any, Literal, cast

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    empty_pb2,
    message_factory,
    struct_pb2,
    timestamp_pb2,
)
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.message import Message
from pydantic import BaseModel, RootModel
from pydantic.errors import PydanticUndefinedAnnotation
from pydantic.fields import FieldInfo

from ..messages import MessageType
from .convert import EMPTY, MessageConverter, generated_converter, model_converters
from .spec import (
    EXTENSION,
    EnumSpec,
    FieldSpec,
    FieldValue,
    MessageRef,
    ModelSpec,
    ProtoSchemaError,
    Scalar,
)
from .typemap import (
    AS_STRING,
    MAPPINGS,
    SCALARS,
    SEQUENCES,
    UNIONS,
    enum_spec,
    field_numbers,
    is_any,
    literal,
    map_entry_name,
    proto_name,
    sequence_element,
    strip_annotated,
    strip_optional,
    type_name,
)

__all__ = ["ProtoMethod", "ProtoSchema", "proto_package"]

_F = descriptor_pb2.FieldDescriptorProto
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PACKAGE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
_EMPTY_NAME = "google.protobuf.Empty"


@dataclass(frozen=True, slots=True)
class ProtoMethod:
    """One rpc of a service. ``request`` and ``response`` are pydantic models, generated
    protobuf classes, ``MessageType``s of either, or ``None`` for ``google.protobuf.Empty``."""

    name: str
    request: Any
    response: Any
    _: KW_ONLY
    client_streaming: bool = False
    server_streaming: bool = False
    description: str = ""


def proto_package(name: str) -> str:
    """The protobuf package for a service or module name: ``"My-Service"`` -> ``"my_service"``."""
    parts = []
    for part in name.lower().split("."):
        part = re.sub(r"[^a-z0-9_]", "_", part)
        if part:
            parts.append(f"_{part}" if part[0].isdigit() else part)
    if not parts:
        raise ProtoSchemaError(f"cannot derive a protobuf package from {name!r}")
    return ".".join(parts)


_WELL_KNOWN_FILES: dict[str, FileDescriptor] = {
    "Timestamp": timestamp_pb2.DESCRIPTOR,
    "Duration": duration_pb2.DESCRIPTOR,
    "Struct": struct_pb2.DESCRIPTOR,
    "Value": struct_pb2.DESCRIPTOR,
    "ListValue": struct_pb2.DESCRIPTOR,
}


class ProtoSchema:
    """The protobuf package of a service: messages from models, services from methods.

    Add everything first (``add_message``, ``add_service``); the first use (``converter``,
    ``file_descriptor``, ``render_proto`` ...) builds the schema, and it cannot change after.
    """

    def __init__(self, *, package: str, file_name: str | None = None) -> None:
        if not _PACKAGE.match(package):
            raise ProtoSchemaError(f"{package!r} is not a protobuf package name")
        self.package = package
        self.file_name = file_name or package.replace(".", "/") + ".proto"
        self.pool = descriptor_pool.DescriptorPool()
        self.models: dict[type[BaseModel], ModelSpec] = {}
        self.enums: dict[type[enum.Enum], EnumSpec] = {}
        self.services: dict[str, tuple[ProtoMethod, ...]] = {}
        # Docstrings and field descriptions by "Message", "Message.field", "Service.Method".
        self.descriptions: dict[str, str] = {}
        self._names: dict[str, object] = {}
        self._generated: dict[type[Message], str] = {}
        self._imports: set[str] = set()
        self._pool_files: set[str] = set()
        self._message_types: list[MessageType] = []
        self._file: FileDescriptor | None = None
        self._file_proto: descriptor_pb2.FileDescriptorProto | None = None
        self._converters: dict[type, MessageConverter] = {}

    def __repr__(self) -> str:
        return f"ProtoSchema(package={self.package!r})"

    def add_message(self, type_: Any) -> str:
        """Add a model, a generated protobuf class or a ``MessageType`` of either; ``None`` is
        ``google.protobuf.Empty``. Returns the message's full name."""
        self._check_open()
        return self._message(type_, where=type_name(type_))

    def add_service(
        self, name: str, methods: Iterable[ProtoMethod], *, description: str = ""
    ) -> None:
        """Add service ``name``: its methods are served as ``/<package>.<name>/<Method>``."""
        self._check_open()
        if not _IDENTIFIER.match(name):
            raise ProtoSchemaError(f"service name {name!r} is not a protobuf identifier")
        if name in self.services:
            raise ProtoSchemaError(f"package {self.package} already has a service {name}")
        self._claim(name, f"service {name}")
        methods = tuple(methods)
        seen: set[str] = set()
        for method in methods:
            where = f"{name}.{method.name}"
            if not _IDENTIFIER.match(method.name):
                raise ProtoSchemaError(f"{where}: {method.name!r} is not a protobuf identifier")
            if method.name in seen:
                raise ProtoSchemaError(f"{where}: the service has two methods of that name")
            seen.add(method.name)
            self._message(method.request, where=f"{where} request")
            self._message(method.response, where=f"{where} response")
            if method.description:
                self.descriptions[where] = method.description
        if description:
            self.descriptions[name] = description
        self.services[name] = methods

    def method_path(self, service: str, method: str) -> str:
        """The gRPC path of a method: ``/greeter.Greeter/Hello``."""
        return f"/{self.package}.{service}/{method}"

    @property
    def service_names(self) -> list[str]:
        """Full names of the services, as gRPC server reflection lists them."""
        return [f"{self.package}.{name}" for name in self.services]

    def full_name(self, type_: Any) -> str:
        """The full protobuf name of a model, generated class or ``None`` of this schema."""
        type_ = _unwrap(type_)
        if type_ is None:
            return _EMPTY_NAME
        if type_ in self.models:
            return f"{self.package}.{self.models[type_].name}"
        if type_ in self._generated:
            return self._generated[type_]
        raise ProtoSchemaError(f"{type_name(type_)} is not a message of package {self.package}")

    @property
    def file_proto(self) -> descriptor_pb2.FileDescriptorProto:
        """The schema as a ``FileDescriptorProto``; builds it on first use."""
        self.build()
        assert self._file_proto is not None
        return self._file_proto

    @property
    def file_descriptor(self) -> FileDescriptor:
        """The schema's file in its pool; builds it on first use."""
        self.build()
        assert self._file is not None
        return self._file

    def converter(self, type_: Any) -> MessageConverter:
        """The converter (model <-> message <-> bytes) of a message of this schema."""
        self.build()
        type_ = _unwrap(type_)
        if type_ is None:
            return EMPTY
        converter = self._converters.get(type_)
        if converter is None:
            if type_ not in self._generated:
                raise ProtoSchemaError(
                    f"{type_name(type_)} is not a message of package {self.package}"
                )
            converter = self._converters[type_] = generated_converter(type_)
        return converter

    def build(self) -> None:
        """Build the file into the pool, then the message classes and converters. Idempotent;
        ``MessageType``s given to the schema get their converter in ``extension["protobuf"]``."""
        if self._file is not None:
            return
        proto = self._file_descriptor_proto()
        try:
            self.pool.Add(proto)
        except (TypeError, ValueError) as exc:
            raise ProtoSchemaError(f"package {self.package}: {exc}") from exc
        self._file = self.pool.FindFileByName(self.file_name)
        self._file_proto = proto
        classes = {
            model: message_factory.GetMessageClass(
                self.pool.FindMessageTypeByName(f"{self.package}.{spec.name}")
            )
            for model, spec in self.models.items()
        }
        self._converters.update(model_converters(self.models.values(), classes))
        for message_type in self._message_types:
            message_type.extension[EXTENSION] = self.converter(message_type)

    def _check_open(self) -> None:
        if self._file is not None:
            raise ProtoSchemaError(
                f"package {self.package} is already built; add every message and service first"
            )

    # -- descriptors ------------------------------------------------------------------------

    def _file_descriptor_proto(self) -> descriptor_pb2.FileDescriptorProto:
        proto = descriptor_pb2.FileDescriptorProto(
            name=self.file_name, package=self.package, syntax="proto3"
        )
        proto.dependency.extend(sorted(self._imports))
        for spec_of_enum in self.enums.values():
            enum_proto = proto.enum_type.add(name=spec_of_enum.name)
            for value_name, number in spec_of_enum.values:
                enum_proto.value.add(name=value_name, number=number)
        for spec in self.models.values():
            message = proto.message_type.add(name=spec.name)
            for field_spec in spec.fields:
                self._add_field(message, field_spec)
        for service_name, methods in self.services.items():
            service = proto.service.add(name=service_name)
            for method in methods:
                method_proto = service.method.add(
                    name=method.name,
                    input_type=f".{self.full_name(method.request)}",
                    output_type=f".{self.full_name(method.response)}",
                )
                # Set only when true, as protoc does, so that the descriptors compare equal.
                if method.client_streaming:
                    method_proto.client_streaming = True
                if method.server_streaming:
                    method_proto.server_streaming = True
        return proto

    def _add_field(self, message: descriptor_pb2.DescriptorProto, spec: FieldSpec) -> None:
        field_proto = message.field.add(name=spec.name, number=spec.number)
        if spec.shape == "map":
            assert spec.key is not None
            # Named and shaped as protoc names the entry of a map<> field, so that our
            # descriptors equal those protoc builds from the rendered .proto.
            entry = message.nested_type.add(name=map_entry_name(spec.name))
            entry.options.map_entry = True
            key = entry.field.add(name="key", number=1, label=_F.LABEL_OPTIONAL)
            self._set_type(key, spec.key)
            value = entry.field.add(name="value", number=2, label=_F.LABEL_OPTIONAL)
            self._set_type(value, spec.value)
            field_proto.label = _F.LABEL_REPEATED
            field_proto.type = _F.TYPE_MESSAGE
            field_proto.type_name = f".{self.package}.{message.name}.{entry.name}"
            return
        field_proto.label = _F.LABEL_REPEATED if spec.shape == "repeated" else _F.LABEL_OPTIONAL
        self._set_type(field_proto, spec.value)
        if spec.optional or spec.defaulted:
            # proto3 optional is a field in a synthetic oneof named after it.
            field_proto.proto3_optional = True
            field_proto.oneof_index = len(message.oneof_decl)
            message.oneof_decl.add(name=f"_{spec.name}")

    def _set_type(
        self, field_proto: descriptor_pb2.FieldDescriptorProto, value: FieldValue
    ) -> None:
        if isinstance(value, Scalar):
            field_proto.type = cast(Any, value.proto_type)
        elif isinstance(value, EnumSpec):
            field_proto.type = _F.TYPE_ENUM
            field_proto.type_name = f".{self.package}.{value.name}"
        else:
            field_proto.type = _F.TYPE_MESSAGE
            field_proto.type_name = f".{value.full_name}"

    # -- collecting types -------------------------------------------------------------------

    def _claim(self, name: str, owner: object) -> None:
        """Messages, enums and services share one scope in a package: one name, one owner."""
        current = self._names.setdefault(name, owner)
        if current is not owner:
            raise ProtoSchemaError(
                f"two definitions are named {name} in package {self.package}: "
                f"{_qualified(current)} and {_qualified(owner)}; rename one"
            )

    def _message(self, type_: Any, *, where: str) -> str:
        if isinstance(type_, MessageType) and type_ not in self._message_types:
            self._message_types.append(type_)
        type_ = _unwrap(type_)
        if type_ is None:
            self._import_file(empty_pb2.DESCRIPTOR)
            return _EMPTY_NAME
        if isinstance(type_, type) and issubclass(type_, Message):
            name = self._generated.get(type_)
            if name is None:
                self._import_file(cast(FileDescriptor, type_.DESCRIPTOR.file))
                name = self._generated[type_] = type_.DESCRIPTOR.full_name
            return name
        if isinstance(type_, type) and issubclass(type_, BaseModel):
            return f"{self.package}.{self._add_model(type_).name}"
        raise ProtoSchemaError(
            f"{where}: {type_name(type_)} cannot be a protobuf message; "
            "use a pydantic model, a generated protobuf class or None"
        )

    def _import_file(self, file: FileDescriptor) -> None:
        self._imports.add(file.name)
        self._add_to_pool(file)

    def _add_to_pool(self, file: FileDescriptor) -> None:
        if file.name in self._pool_files:
            return
        for dependency in file.dependencies:
            self._add_to_pool(dependency)
        try:
            self.pool.AddSerializedFile(file.serialized_pb)
        except (TypeError, ValueError) as exc:
            raise ProtoSchemaError(
                f"package {self.package}: cannot import {file.name}: {exc}"
            ) from exc
        self._pool_files.add(file.name)

    def _add_model(self, model: type[BaseModel]) -> ModelSpec:
        spec = self.models.get(model)
        if spec is not None:
            return spec
        if issubclass(model, RootModel):
            raise ProtoSchemaError(
                f"{model.__name__}: a RootModel has no named fields; wrap the value in a model"
            )
        if not model.__pydantic_complete__:
            try:
                model.model_rebuild()
            except PydanticUndefinedAnnotation as exc:
                raise ProtoSchemaError(f"{model.__name__}: {exc}") from exc
        name = proto_name(model.__name__)
        self._claim(name, model)
        # Registered before its fields are read, so that a model can refer to itself.
        spec = self.models[model] = ModelSpec(model, name)
        if model.__doc__:
            self.descriptions[name] = model.__doc__
        fields = [(n, info) for n, info in model.model_fields.items() if not info.exclude]
        numbers = field_numbers(model.__name__, fields)
        for field_name, info in fields:
            where = f"{model.__name__}.{field_name}"
            if not _IDENTIFIER.match(field_name) or keyword.iskeyword(field_name):
                raise ProtoSchemaError(
                    f"{where}: field names must be ASCII identifiers and not Python keywords"
                )
            spec.fields.append(self._field(where, field_name, numbers[field_name], info))
            if info.description:
                self.descriptions[f"{name}.{field_name}"] = info.description
        return spec

    def _field(self, where: str, name: str, number: int, info: FieldInfo) -> FieldSpec:
        annotation = info.annotation
        tp, nullable = strip_optional(annotation, where)
        origin = typing.get_origin(tp)
        if tp in SEQUENCES or origin in SEQUENCES:
            element = sequence_element(tp, where)
            if is_any(element):
                return FieldSpec(name, number, self._well_known("ListValue"), nullable=nullable)
            if nullable:
                raise ProtoSchemaError(
                    f"{where}: {type_name(annotation)}: a repeated field cannot be None; "
                    "use an empty default instead"
                )
            value = self._element(where, element, tp)
            return FieldSpec(name, number, value, shape="repeated")
        if tp in MAPPINGS or origin in MAPPINGS:
            key, element = typing.get_args(tp) or (Any, Any)
            key = strip_annotated(key, where)
            element = strip_annotated(element, where)
            if is_any(element) and (key is str or is_any(key)):
                return FieldSpec(name, number, self._well_known("Struct"), nullable=nullable)
            if nullable:
                raise ProtoSchemaError(
                    f"{where}: {type_name(annotation)}: a map field cannot be None; "
                    "use an empty default instead"
                )
            if key not in (str, int, bool):
                raise ProtoSchemaError(
                    f"{where}: {type_name(tp)}: map keys must be str, int or bool"
                )
            value = self._element(where, element, tp)
            return FieldSpec(name, number, value, shape="map", key=SCALARS[key])
        value = self._singular(where, tp)
        optional = nullable and not isinstance(value, MessageRef)
        defaulted = not nullable and _default_is_not_zero(info, value)
        return FieldSpec(
            name, number, value, optional=optional, nullable=nullable, defaulted=defaulted
        )

    def _element(self, where: str, annotation: Any, container: Any) -> FieldValue:
        """The type of a repeated field's items or a map's values."""
        tp = strip_annotated(annotation, where)
        origin = typing.get_origin(tp)
        if is_any(tp):
            return self._well_known("Value")
        if (tp in SEQUENCES or origin in SEQUENCES) and is_any(sequence_element(tp, where)):
            return self._well_known("ListValue")
        if (tp in MAPPINGS or origin in MAPPINGS) and is_any(
            (typing.get_args(tp) or (Any, Any))[1]
        ):
            return self._well_known("Struct")
        if tp in SEQUENCES or origin in (*SEQUENCES, *MAPPINGS, *UNIONS) or tp in MAPPINGS:
            raise ProtoSchemaError(
                f"{where}: {type_name(container)}: a repeated or map field cannot hold "
                f"{type_name(tp)}; wrap it in a model"
            )
        return self._singular(where, tp)

    def _singular(self, where: str, tp: Any) -> FieldValue:
        if is_any(tp):
            return self._well_known("Value")
        if typing.get_origin(tp) is Literal:
            return literal(where, tp)
        if isinstance(tp, type):
            if issubclass(tp, enum.Enum):
                return self._add_enum(tp, where)
            if issubclass(tp, BaseModel):
                return MessageRef(f"{self.package}.{self._add_model(tp).name}", model=tp)
            if issubclass(tp, dt.datetime):
                return self._well_known("Timestamp")
            if issubclass(tp, dt.timedelta):
                return self._well_known("Duration")
            for python_type, scalar in (*AS_STRING.items(), *SCALARS.items()):
                if issubclass(tp, python_type):
                    return scalar
        raise ProtoSchemaError(f"{where}: protobuf cannot carry {type_name(tp)}")

    def _well_known(self, name: str) -> MessageRef:
        self._import_file(_WELL_KNOWN_FILES[name])
        return MessageRef(f"google.protobuf.{name}", well_known=name)

    def _add_enum(self, enum_cls: type[enum.Enum], where: str) -> EnumSpec:
        spec = self.enums.get(enum_cls)
        if spec is None:
            if issubclass(enum_cls, enum.Flag):
                raise ProtoSchemaError(
                    f"{where}: {enum_cls.__name__} is a Flag, whose combinations a protobuf enum "
                    "cannot hold; declare the field as int"
                )
            name = proto_name(enum_cls.__name__)
            self._claim(name, enum_cls)
            spec = self.enums[enum_cls] = enum_spec(enum_cls, name, where)
        return spec


def _unwrap(type_: Any) -> Any:
    """The class behind a ``MessageType`` or ``Annotated[Model, ...]``; ``None`` for no message."""
    if isinstance(type_, MessageType):
        type_ = type_.type
    if typing.get_origin(type_) is typing.Annotated:
        type_ = type_.__origin__
    return None if type_ is type(None) else type_


def _qualified(owner: object) -> str:
    if isinstance(owner, type):
        return f"{owner.__module__}.{owner.__qualname__}"
    return str(owner)


def _default_is_not_zero(info: FieldInfo, value: FieldValue) -> bool:
    """Whether a scalar or enum field has a default that differs from what proto3 reads for a
    field left out (0, "", false, the enum's number 0): then the field needs presence, so that
    a caller leaving it out gets the default. A default factory is taken to need it."""
    if info.is_required() or isinstance(value, MessageRef):
        return False
    if info.default_factory is not None:
        return True
    default = info.default
    if isinstance(value, EnumSpec):
        return not value.unspecified and value.numbers.get(default) != 0
    if value.blank_is_unset:  # "" already reads as "not given"
        return False
    wire = default if value.to_wire is None or default is None else value.to_wire(default)
    return bool(wire) or wire is None
