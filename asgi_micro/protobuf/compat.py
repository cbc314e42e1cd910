"""Catch a model change that would break clients built from an earlier ``.proto``.

Clients compiled from the previous ``.proto`` know fields by number. Inserting a field before
others renumbers them, so an old client would put its values into the wrong fields without any
error; ``check_compatible`` compares the previous file, read by ``grpc_tools.protoc``, with the
current schema and lists every field whose number or type changed and every number now used
by another field (the same for enum values and the methods' types). Added fields and removed
ones are compatible.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor

from .render import relative_name, type_label
from .schema import ProtoSchema
from .spec import ProtoSchemaError

__all__ = ["IncompatibleSchema", "check_compatible", "find_incompatibilities", "parse_proto"]


class IncompatibleSchema(ProtoSchemaError):
    """The schema would break clients of the previous ``.proto``; ``changes`` lists why."""

    def __init__(self, package: str, changes: list[str]) -> None:
        self.changes = changes
        listed = "\n".join(f"  - {change}" for change in changes)
        super().__init__(
            f"package {package} is not compatible with the previous .proto:\n{listed}\n"
            "Pin the old numbers with Annotated[..., ProtoField(number=N)], add new fields "
            "after the existing ones, or regenerate the previous .proto if the break is wanted."
        )


def check_compatible(schema: ProtoSchema, previous: str) -> None:
    """Raise ``IncompatibleSchema`` when ``schema`` breaks clients of the ``previous`` text."""
    changes = find_incompatibilities(schema, previous)
    if changes:
        raise IncompatibleSchema(schema.package, changes)


def find_incompatibilities(schema: ProtoSchema, previous: str) -> list[str]:
    """Every change of ``schema`` that clients of the ``previous`` ``.proto`` text would misread."""
    old = parse_proto(previous, file_name=schema.file_name, imports=_imports(schema))
    new = schema.file_proto
    changes: list[str] = []
    new_messages = {message.name: message for message in new.message_type}
    for old_message in old.message_type:
        new_message = new_messages.get(old_message.name)
        if new_message is not None:
            changes += _message_changes(old_message, old.package, new_message, new.package)
    new_enums = {enum.name: enum for enum in new.enum_type}
    for old_enum in old.enum_type:
        if old_enum.name in new_enums:
            changes += _numbered_changes(
                old_enum.name,
                {value.name: (value.number, "") for value in old_enum.value},
                {value.name: (value.number, "") for value in new_enums[old_enum.name].value},
                "value",
            )
    new_services = {service.name: service for service in new.service}
    for old_service in old.service:
        if old_service.name in new_services:
            changes += _service_changes(
                old_service, old.package, new_services[old_service.name], new.package
            )
    return changes


def parse_proto(
    text: str, *, file_name: str, imports: list[descriptor_pb2.FileDescriptorProto] | None = None
) -> descriptor_pb2.FileDescriptorProto:
    """``.proto`` text as protoc reads it. ``imports`` are files it may import besides the
    well-known types (those of generated classes a schema uses)."""
    include = resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory(prefix="asgi-micro-proto-") as tmp:
        root = Path(tmp)
        source = root / "src" / file_name
        source.parent.mkdir(parents=True)
        source.write_text(text, encoding="utf-8")
        output = root / "out.pb"
        command = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--proto_path={root / 'src'}",
            f"--proto_path={include}",
            f"--descriptor_set_out={output}",
        ]
        if imports:
            known = root / "imports.pb"
            known.write_bytes(descriptor_pb2.FileDescriptorSet(file=imports).SerializeToString())
            command.append(f"--descriptor_set_in={known}")
        command.append(file_name)
        # A child process, because protoc writes its errors straight to file descriptor 2.
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ProtoSchemaError(
                f"protoc cannot read the previous .proto: {result.stderr.strip()}"
            )
        parsed = descriptor_pb2.FileDescriptorSet.FromString(output.read_bytes())
    (proto,) = (file for file in parsed.file if file.name == file_name)
    return proto


def _imports(schema: ProtoSchema) -> list[descriptor_pb2.FileDescriptorProto]:
    """The files of generated classes the schema imports, dependencies first; protoc finds the
    well-known types itself."""
    found: dict[str, descriptor_pb2.FileDescriptorProto] = {}

    def visit(file: FileDescriptor) -> None:
        for dependency in file.dependencies:
            if dependency.name not in found and not dependency.name.startswith("google/protobuf/"):
                visit(dependency)
                proto = descriptor_pb2.FileDescriptorProto()
                dependency.CopyToProto(proto)
                found[dependency.name] = proto

    visit(schema.file_descriptor)
    return list(found.values())


def _message_changes(
    old: descriptor_pb2.DescriptorProto,
    old_package: str,
    new: descriptor_pb2.DescriptorProto,
    new_package: str,
) -> list[str]:
    old_name, new_name = relative_name(old_package), relative_name(new_package)
    return _numbered_changes(
        old.name,
        {field.name: (field.number, type_label(field, old, old_name)) for field in old.field},
        {field.name: (field.number, type_label(field, new, new_name)) for field in new.field},
        "field",
    )


def _numbered_changes(
    owner: str,
    old: dict[str, tuple[int, str]],
    new: dict[str, tuple[int, str]],
    kind: str,
) -> list[str]:
    """Changes between two ``name -> (number, type)`` tables of one message or enum."""
    changes = []
    new_by_number = {number: name for name, (number, _) in new.items()}
    for name, (number, type_) in old.items():
        if name in new:
            new_number, new_type = new[name]
            if new_number != number:
                changes.append(
                    f"{owner}.{name}: {kind} number changed from {number} to {new_number}"
                )
            if new_type != type_:
                changes.append(f"{owner}.{name}: type changed from {type_} to {new_type}")
        reused_by = new_by_number.get(number)
        if reused_by is not None and reused_by != name:
            changes.append(f"{owner}: {kind} number {number} was {name}, now it is {reused_by}")
    return changes


def _service_changes(
    old: descriptor_pb2.ServiceDescriptorProto,
    old_package: str,
    new: descriptor_pb2.ServiceDescriptorProto,
    new_package: str,
) -> list[str]:
    changes = []
    new_methods = {method.name: method for method in new.method}
    for old_method in old.method:
        new_method = new_methods.get(old_method.name)
        if new_method is None:
            continue
        where = f"{old.name}.{old_method.name}"
        before = _signature(old_method, old_package)
        after = _signature(new_method, new_package)
        if before != after:
            changes.append(f"{where}: changed from {before} to {after}")
    return changes


def _signature(method: descriptor_pb2.MethodDescriptorProto, package: str) -> str:
    name = relative_name(package)

    def side(type_name: str, streaming: bool) -> str:
        return f"stream {name(type_name)}" if streaming else name(type_name)

    request = side(method.input_type, method.client_streaming)
    response = side(method.output_type, method.server_streaming)
    return f"({request}) returns ({response})"
