"""The renumbering check: a previous ``.proto`` (read by protoc) against the current schema."""

from __future__ import annotations

import enum
from typing import Annotated

import pytest
from pydantic import BaseModel, create_model

from asgi_micro.protobuf import (
    IncompatibleSchema,
    ProtoField,
    ProtoMethod,
    ProtoSchema,
    ProtoSchemaError,
    check_compatible,
    find_incompatibilities,
    render_proto,
)

from .conftest import Compile


def schema_of(*models: type[BaseModel], package: str = "users") -> ProtoSchema:
    schema = ProtoSchema(package=package)
    for model in models:
        schema.add_message(model)
    return schema


def previous(*models: type[BaseModel], package: str = "users") -> str:
    return render_proto(schema_of(*models, package=package))


class Address(BaseModel):
    city: str


def v1() -> type[BaseModel]:
    class User(BaseModel):
        name: str
        age: int
        address: Address | None = None

    return User


def test_an_unchanged_schema_is_compatible() -> None:
    check_compatible(schema_of(v1()), previous(v1()))


def test_an_appended_field_is_compatible() -> None:
    class User(BaseModel):
        name: str
        age: int
        address: Address | None = None
        email: str = ""

    check_compatible(schema_of(User), previous(v1()))


def test_a_removed_field_is_compatible_when_the_others_keep_their_numbers() -> None:
    class User(BaseModel):
        name: str
        address: Annotated[Address | None, ProtoField(number=3)] = None

    check_compatible(schema_of(User), previous(v1()))


def test_a_removed_field_shifting_the_others_is_caught() -> None:
    class User(BaseModel):
        name: str
        address: Address | None = None

    assert find_incompatibilities(schema_of(User), previous(v1())) == [
        "User: field number 2 was age, now it is address",
        "User.address: field number changed from 3 to 2",
    ]


def test_an_inserted_field_renumbering_the_rest_is_caught() -> None:
    class User(BaseModel):
        name: str
        nickname: str = ""
        age: int
        address: Address | None = None

    with pytest.raises(IncompatibleSchema) as caught:
        check_compatible(schema_of(User), previous(v1()))
    assert caught.value.changes == [
        "User.age: field number changed from 2 to 3",
        "User: field number 2 was age, now it is nickname",
        "User.address: field number changed from 3 to 4",
        "User: field number 3 was address, now it is age",
    ]
    message = str(caught.value)
    assert "package users is not compatible with the previous .proto" in message
    assert "ProtoField(number=N)" in message


def test_pinning_the_inserted_field_makes_it_compatible() -> None:
    class User(BaseModel):
        name: str
        nickname: Annotated[str, ProtoField(number=4)] = ""
        age: int
        address: Address | None = None

    check_compatible(schema_of(User), previous(v1()))


def test_type_changes_are_caught() -> None:
    class User(BaseModel):
        name: str
        age: str
        address: list[Address] = []

    assert find_incompatibilities(schema_of(User), previous(v1())) == [
        "User.age: type changed from int64 to string",
        "User.address: type changed from Address to repeated Address",
    ]


def test_nested_messages_are_checked_too() -> None:
    class Address(BaseModel):
        street: str
        city: str

    class User(BaseModel):
        name: str
        age: int
        address: Address | None = None

    assert find_incompatibilities(schema_of(User), previous(v1())) == [
        "Address.city: field number changed from 1 to 2",
        "Address: field number 1 was city, now it is street",
    ]


def test_enum_values_renumbered_by_an_insertion_are_caught() -> None:
    def member_model(*roles: str) -> type[BaseModel]:
        role = enum.Enum("Role", {name.upper(): name for name in roles})  # type: ignore[misc]
        return create_model("Member", role=(role, ...))

    old = previous(member_model("admin", "user"))
    assert find_incompatibilities(schema_of(member_model("guest", "admin", "user")), old) == [
        "Role.ROLE_ADMIN: value number changed from 1 to 2",
        "Role: value number 1 was ROLE_ADMIN, now it is ROLE_GUEST",
        "Role.ROLE_USER: value number changed from 2 to 3",
        "Role: value number 2 was ROLE_USER, now it is ROLE_ADMIN",
    ]


def test_method_signature_changes_are_caught() -> None:
    class Request(BaseModel):
        name: str

    class Reply(BaseModel):
        text: str

    before = ProtoSchema(package="svc")
    before.add_service("Api", [ProtoMethod("Get", Request, Reply), ProtoMethod("Gone", None, None)])
    after = ProtoSchema(package="svc")
    after.add_service("Api", [ProtoMethod("Get", Request, Reply, server_streaming=True)])
    assert find_incompatibilities(after, render_proto(before)) == [
        "Api.Get: changed from (Request) returns (Reply) to (Request) returns (stream Reply)"
    ]


def test_a_previous_file_protoc_cannot_read_is_an_error() -> None:
    with pytest.raises(
        ProtoSchemaError, match=r"protoc cannot read the previous \.proto: .*users\.proto:3"
    ):
        check_compatible(
            schema_of(v1()), 'syntax = "proto3";\npackage users;\nmessage User { int64 }\n'
        )


def test_a_schema_importing_generated_classes(package: str, compile_proto: Compile) -> None:
    own = f"{package}_geo"
    geo = compile_proto(
        {
            f"{own}.proto": (
                f'syntax = "proto3";\npackage {own};\nimport "google/protobuf/timestamp.proto";\n'
                "message Point { double lat = 1; google.protobuf.Timestamp at = 2; }\n"
            )
        },
        f"{own}_pb2",
    )

    class Place(BaseModel):
        name: str

    before = ProtoSchema(package=package)
    before.add_service("Maps", [ProtoMethod("Locate", Place, geo.Point)])
    after = ProtoSchema(package=package)
    after.add_service("Maps", [ProtoMethod("Locate", geo.Point, Place)])
    assert find_incompatibilities(after, render_proto(before)) == [
        f"Maps.Locate: changed from (Place) returns ({own}.Point) to ({own}.Point) returns (Place)"
    ]
