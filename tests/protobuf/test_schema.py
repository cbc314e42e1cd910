"""Descriptors from models: type mapping, field numbers, names, services, and the errors a
definition protobuf cannot carry raises at build time."""

from __future__ import annotations

import collections
import datetime as dt
import enum
import pathlib
from collections.abc import Callable
from typing import Annotated, Any, Optional

import pytest
from google.protobuf import descriptor_pb2, empty_pb2
from pydantic import BaseModel, Field, RootModel, create_model

from asgi_micro.codec import MessageType
from asgi_micro.protobuf import (
    ProtoField,
    ProtoMethod,
    ProtoSchema,
    ProtoSchemaError,
    proto_package,
)

F = descriptor_pb2.FieldDescriptorProto


def message_proto(
    model: type[BaseModel], package: str = "schema"
) -> descriptor_pb2.DescriptorProto:
    schema = ProtoSchema(package=package)
    schema.add_message(model)
    (message,) = (m for m in schema.file_proto.message_type if m.name == model.__name__)
    return message


def numbers(model: type[BaseModel]) -> dict[str, int]:
    return {field.name: field.number for field in message_proto(model).field}


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Item(BaseModel):
    name: str


class TestTypeMapping:
    def test_scalars_and_well_known_types(self) -> None:
        class Model(BaseModel):
            text: str
            count: int
            ratio: float
            flag: bool
            blob: bytes
            when: dt.datetime
            took: dt.timedelta
            meta: dict[str, Any]
            anything: Any
            items: list[Any]

        fields = {field.name: field for field in message_proto(Model).field}
        assert [fields[name].type for name in ("text", "count", "ratio", "flag", "blob")] == [
            F.TYPE_STRING,
            F.TYPE_INT64,
            F.TYPE_DOUBLE,
            F.TYPE_BOOL,
            F.TYPE_BYTES,
        ]
        assert {
            name: fields[name].type_name for name in ("when", "took", "meta", "anything", "items")
        } == {
            "when": ".google.protobuf.Timestamp",
            "took": ".google.protobuf.Duration",
            "meta": ".google.protobuf.Struct",
            "anything": ".google.protobuf.Value",
            "items": ".google.protobuf.ListValue",
        }

    def test_optional_scalars_are_proto3_optional_and_messages_are_not(self) -> None:
        class Model(BaseModel):
            count: int | None = None
            legacy: Optional[str] = None  # noqa: UP045
            item: Item | None = None
            color: Color | None = None

        message = message_proto(Model)
        fields = {field.name: field for field in message.field}
        assert fields["count"].proto3_optional
        assert fields["legacy"].proto3_optional
        assert fields["color"].proto3_optional
        assert not fields["item"].proto3_optional
        assert [oneof.name for oneof in message.oneof_decl] == ["_count", "_legacy", "_color"]

    def test_repeated_and_map_fields(self) -> None:
        class Model(BaseModel):
            tags: list[str]
            word_counts: dict[str, int]
            items_by_id: dict[int, Item]

        message = message_proto(Model)
        fields = {field.name: field for field in message.field}
        assert fields["tags"].label == F.LABEL_REPEATED
        entries = {entry.name: entry for entry in message.nested_type}
        assert set(entries) == {"WordCountsEntry", "ItemsByIdEntry"}
        assert all(entry.options.map_entry for entry in entries.values())
        assert fields["items_by_id"].type_name == ".schema.Model.ItemsByIdEntry"
        key, value = entries["ItemsByIdEntry"].field
        assert (key.type, value.type_name) == (F.TYPE_INT64, ".schema.Item")

    def test_nested_models_and_enums_are_collected_once(self) -> None:
        class Model(BaseModel):
            first: Item
            second: list[Item]
            color: Color
            colors: dict[str, Color]

        schema = ProtoSchema(package="nested")
        schema.add_message(Model)
        proto = schema.file_proto
        assert [m.name for m in proto.message_type] == ["Model", "Item"]
        assert [e.name for e in proto.enum_type] == ["Color"]

    def test_only_used_well_known_types_are_imported(self) -> None:
        class Model(BaseModel):
            when: dt.datetime

        schema = ProtoSchema(package="imports")
        schema.add_message(Model)
        assert list(schema.file_proto.dependency) == ["google/protobuf/timestamp.proto"]
        assert schema.pool.FindMessageTypeByName("google.protobuf.Timestamp")

    def test_literals(self) -> None:
        from typing import Literal

        class Model(BaseModel):
            mode: Literal["a", "b"]
            level: Literal[1, 2, 3]

        assert [f.type for f in message_proto(Model).field] == [F.TYPE_STRING, F.TYPE_INT64]


class TestEnums:
    def enum_values(self, enum_cls: type[enum.Enum]) -> list[tuple[str, int]]:
        model = create_model("Holder", value=(enum_cls, ...))
        schema = ProtoSchema(package="enums")
        schema.add_message(model)
        (enum_proto,) = schema.file_proto.enum_type
        return [(value.name, value.number) for value in enum_proto.value]

    def test_str_enums_get_an_unspecified_zero_and_declaration_order(self) -> None:
        class Status(enum.StrEnum):
            ACTIVE = "active"
            on_hold = "hold"

        assert self.enum_values(Status) == [
            ("STATUS_UNSPECIFIED", 0),
            ("STATUS_ACTIVE", 1),
            ("STATUS_ON_HOLD", 2),
        ]

    def test_int_enums_keep_their_values(self) -> None:
        class HTTPCode(enum.IntEnum):
            OK = 200
            NOT_FOUND = 404
            NEGATIVE = -1

        assert self.enum_values(HTTPCode) == [
            ("HTTP_CODE_UNSPECIFIED", 0),
            ("HTTP_CODE_OK", 200),
            ("HTTP_CODE_NOT_FOUND", 404),
            ("HTTP_CODE_NEGATIVE", -1),
        ]

    def test_a_zero_member_is_the_zero_value(self) -> None:
        class Level(enum.IntEnum):
            HIGH = 2
            NONE = 0

        assert self.enum_values(Level) == [("LEVEL_NONE", 0), ("LEVEL_HIGH", 2)]

    def test_a_member_named_unspecified_is_zero(self) -> None:
        class Kind(enum.Enum):
            A = "a"
            UNSPECIFIED = "?"

        assert self.enum_values(Kind) == [("KIND_UNSPECIFIED", 0), ("KIND_A", 1)]

    def test_member_names_that_collide_in_protobuf_are_rejected(self) -> None:
        class Case(enum.Enum):
            a = "lower"
            A = "upper"

        with pytest.raises(ProtoSchemaError, match="CASE_A"):
            self.enum_values(Case)

    def test_an_int_enum_unspecified_member_must_be_zero(self) -> None:
        class Odd(enum.IntEnum):
            UNSPECIFIED = 3

        with pytest.raises(ProtoSchemaError, match="ODD_UNSPECIFIED"):
            self.enum_values(Odd)

    def test_values_outside_int32_are_rejected(self) -> None:
        class Big(enum.IntEnum):
            HUGE = 2**31

        with pytest.raises(ProtoSchemaError, match=r"Holder\.value: Big\.HUGE"):
            self.enum_values(Big)

    def test_flags_are_rejected(self) -> None:
        class Perm(enum.IntFlag):
            R = 4
            W = 2

        with pytest.raises(ProtoSchemaError, match=r"Holder\.value: Perm is a Flag"):
            self.enum_values(Perm)


class TestFieldNumbers:
    def test_declaration_order(self) -> None:
        class Model(BaseModel):
            b: int
            a: int
            c: int

        assert numbers(Model) == {"b": 1, "a": 2, "c": 3}

    def test_pinned_fields_keep_their_number_and_others_take_the_lowest_free(self) -> None:
        class Model(BaseModel):
            a: int
            inserted: Annotated[str, ProtoField(number=4)]
            b: int
            c: Annotated[int | None, ProtoField(number=2)] = None
            d: int
            e: int

        assert numbers(Model) == {"a": 1, "inserted": 4, "b": 3, "c": 2, "d": 5, "e": 6}

    def test_pinning_works_beside_other_metadata(self) -> None:
        class Model(BaseModel):
            a: Annotated[int, Field(ge=0), ProtoField(number=10)]

        assert numbers(Model) == {"a": 10}

    def test_collisions_are_rejected(self) -> None:
        class Model(BaseModel):
            a: Annotated[int, ProtoField(number=3)]
            b: Annotated[int, ProtoField(number=3)]

        with pytest.raises(
            ProtoSchemaError, match=r"Model\.b: field number 3 is already pinned by Model\.a"
        ):
            numbers(Model)

    @pytest.mark.parametrize("number", [0, -1, 19000, 19999, 2**29])
    def test_invalid_numbers_are_rejected(self, number: int) -> None:
        model = create_model("Model", a=(Annotated[int, ProtoField(number=number)], ...))
        with pytest.raises(ProtoSchemaError, match=rf"Model\.a: field number.*{number}"):
            numbers(model)

    def test_the_largest_number_is_accepted(self) -> None:
        model = create_model("Model", a=(Annotated[int, ProtoField(number=2**29 - 1)], ...))
        assert numbers(model) == {"a": 2**29 - 1}

    def test_a_proto_field_inside_the_type_is_rejected(self) -> None:
        class Model(BaseModel):
            a: Annotated[int, ProtoField(number=3)] | None = None

        with pytest.raises(ProtoSchemaError, match=r"Model\.a: ProtoField must annotate the whole"):
            numbers(Model)

    def test_two_proto_fields_are_rejected(self) -> None:
        class Model(BaseModel):
            a: Annotated[int, ProtoField(number=3), ProtoField(number=4)]

        with pytest.raises(ProtoSchemaError, match=r"Model\.a: more than one ProtoField"):
            numbers(Model)

    def test_numbers_are_stable_across_builds(self) -> None:
        class Model(BaseModel):
            z: int
            y: Item
            x: list[str]

        assert message_proto(Model, "one") == message_proto(Model, "one")


class Nested(BaseModel):
    x: int


class TestUnsupported:
    @pytest.mark.parametrize(
        ("annotation", "message"),
        [
            (list[list[int]], "a repeated or map field cannot hold list"),
            (dict[str, list[int]], "a repeated or map field cannot hold list"),
            (tuple[int, str], r"only tuple\[X, ...\] maps to a repeated field"),
            (int | str, "protobuf cannot carry the union"),
            (Item | Nested, "protobuf cannot carry the union"),
            (list[int] | None, "a repeated field cannot be None"),
            (dict[str, int] | None, "a map field cannot be None"),
            (dict[float, int], "map keys must be str, int or bool"),
            (dict[Color, int], "map keys must be str, int or bool"),
            (list[int | None], "cannot hold int | None"),
            (complex, "protobuf cannot carry complex"),
            (pathlib.Path, "protobuf cannot carry Path"),
            (Callable[[], int], "protobuf cannot carry"),
            (collections.deque[int], "protobuf cannot carry"),
        ],
    )
    def test_fails_at_build_time_naming_model_and_field(
        self, annotation: Any, message: str
    ) -> None:
        model = create_model("Payload", value=(annotation, ...))
        with pytest.raises(ProtoSchemaError, match=rf"Payload\.value: .*{message}"):
            ProtoSchema(package="unsupported").add_message(model)

    def test_mixed_literals_are_rejected(self) -> None:
        from typing import Literal

        model = create_model("Payload", value=(Literal["a", 1], ...))
        with pytest.raises(
            ProtoSchemaError, match=r"Payload\.value: .*Literal needs values of one type"
        ):
            ProtoSchema(package="unsupported").add_message(model)

    @pytest.mark.parametrize("name", ["größe", "async"])
    def test_field_names_that_cannot_be_attributes_are_rejected(self, name: str) -> None:
        model = create_model("Payload", **{name: (int, ...)})  # type: ignore[call-overload]
        with pytest.raises(
            ProtoSchemaError, match=rf"Payload\.{name}: field names must be ASCII identifiers"
        ):
            ProtoSchema(package="unsupported").add_message(model)

    def test_root_models_are_rejected(self) -> None:
        class Numbers(RootModel[list[int]]):
            pass

        with pytest.raises(ProtoSchemaError, match="Numbers: a RootModel has no named fields"):
            ProtoSchema(package="unsupported").add_message(Numbers)

    def test_a_nested_model_with_an_unsupported_field_is_named(self) -> None:
        class Inner(BaseModel):
            bad: set[list[int]]

        class Outer(BaseModel):
            inner: Inner

        with pytest.raises(ProtoSchemaError, match=r"Inner\.bad"):
            ProtoSchema(package="unsupported").add_message(Outer)

    def test_a_method_type_that_is_not_a_message(self) -> None:
        schema = ProtoSchema(package="unsupported")
        with pytest.raises(
            ProtoSchemaError,
            match=r"Greeter\.List response: list\[int\] cannot be a protobuf message",
        ):
            schema.add_service("Greeter", [ProtoMethod("List", None, list[int])])


class TestNames:
    def test_two_models_with_one_name_are_rejected(self) -> None:
        def make() -> type[BaseModel]:
            class Item(BaseModel):
                other: int

            return Item

        class Holder(BaseModel):
            a: Item
            b: make()  # type: ignore[valid-type]

        with pytest.raises(
            ProtoSchemaError,
            match=r"two definitions are named Item in package names: .*Item and .*Item; rename one",
        ):
            ProtoSchema(package="names").add_message(Holder)

    def test_an_enum_and_a_model_share_one_namespace(self) -> None:
        schema = ProtoSchema(package="names")
        schema.add_message(create_model("Color", x=(int, ...)))
        with pytest.raises(ProtoSchemaError, match="two definitions are named Color"):
            schema.add_message(create_model("Holder", c=(Color, ...)))

    def test_package_names(self) -> None:
        assert proto_package("greeter") == "greeter"
        assert proto_package("go.micro.srv.Greeter") == "go.micro.srv.greeter"
        assert proto_package("my-service") == "my_service"
        assert proto_package("2fa.api") == "_2fa.api"
        with pytest.raises(ProtoSchemaError, match="cannot derive"):
            proto_package("..")
        with pytest.raises(ProtoSchemaError, match="not a protobuf package name"):
            ProtoSchema(package="my-service")

    def test_file_name_follows_the_package(self) -> None:
        assert ProtoSchema(package="acme.greeter").file_name == "acme/greeter.proto"
        assert ProtoSchema(package="acme", file_name="x/y.proto").file_name == "x/y.proto"


class HelloRequest(BaseModel):
    name: str


class HelloResponse(BaseModel):
    message: str


class TestServices:
    def test_services_methods_and_paths(self) -> None:
        schema = ProtoSchema(package="greeter")
        schema.add_service(
            "Greeter",
            [
                ProtoMethod("Hello", HelloRequest, HelloResponse),
                ProtoMethod(
                    "Chat",
                    HelloRequest,
                    HelloResponse,
                    client_streaming=True,
                    server_streaming=True,
                ),
                ProtoMethod("Ping", None, None),
            ],
        )
        (service,) = schema.file_proto.service
        methods = {method.name: method for method in service.method}
        assert (methods["Hello"].input_type, methods["Hello"].output_type) == (
            ".greeter.HelloRequest",
            ".greeter.HelloResponse",
        )
        assert methods["Chat"].client_streaming
        assert methods["Chat"].server_streaming
        assert methods["Ping"].input_type == ".google.protobuf.Empty"
        assert schema.method_path("Greeter", "Hello") == "/greeter.Greeter/Hello"
        assert schema.service_names == ["greeter.Greeter"]
        descriptor = schema.pool.FindServiceByName("greeter.Greeter")
        assert descriptor.methods_by_name["Chat"].client_streaming

    def test_annotated_message_types_are_their_model(self) -> None:
        annotated = MessageType(Annotated[HelloRequest, "handler metadata"])
        schema = ProtoSchema(package="greeter")
        schema.add_service("Greeter", [ProtoMethod("Hello", annotated, None)])
        schema.build()
        assert annotated.extension["protobuf"] is schema.converter(HelloRequest)
        assert schema.full_name(annotated) == "greeter.HelloRequest"

    def test_empty_converter(self) -> None:
        schema = ProtoSchema(package="greeter")
        schema.add_service("Greeter", [ProtoMethod("Ping", None, None)])
        converter = schema.converter(None)
        assert converter.message_class is empty_pb2.Empty
        assert converter.encode(None) == b""
        assert converter.decode(b"") is None

    def test_message_types_get_their_converter(self) -> None:
        request, response = MessageType(HelloRequest), MessageType(HelloResponse)
        schema = ProtoSchema(package="greeter")
        schema.add_service("Greeter", [ProtoMethod("Hello", request, response)])
        assert "protobuf" not in request.extension
        schema.build()
        assert request.extension["protobuf"] is schema.converter(HelloRequest)
        assert response.extension["protobuf"].full_name == "greeter.HelloResponse"

    def test_invalid_definitions(self) -> None:
        schema = ProtoSchema(package="greeter")
        with pytest.raises(ProtoSchemaError, match="not a protobuf identifier"):
            schema.add_service("my-service", [])
        with pytest.raises(ProtoSchemaError, match=r"Greeter\.Hello: the service has two methods"):
            schema.add_service(
                "Greeter", [ProtoMethod("Hello", None, None), ProtoMethod("Hello", None, None)]
            )
        schema.add_service("Other", [])
        with pytest.raises(ProtoSchemaError, match="already has a service Other"):
            schema.add_service("Other", [])
        schema.add_service("HelloRequest", [])
        with pytest.raises(ProtoSchemaError, match="two definitions are named HelloRequest"):
            schema.add_message(HelloRequest)

    def test_a_built_schema_is_frozen(self) -> None:
        schema = ProtoSchema(package="greeter")
        schema.add_message(HelloRequest)
        schema.build()
        with pytest.raises(ProtoSchemaError, match="already built"):
            schema.add_message(HelloResponse)
        with pytest.raises(ProtoSchemaError, match="not a message of package greeter"):
            schema.converter(HelloResponse)

    def test_schemas_do_not_share_names(self) -> None:
        first, second = ProtoSchema(package="same"), ProtoSchema(package="same")
        first.add_message(HelloRequest)
        second.add_message(create_model("HelloRequest", other=(int, ...)))
        assert first.file_descriptor.message_types_by_name["HelloRequest"].fields[0].name == "name"
        assert (
            second.file_descriptor.message_types_by_name["HelloRequest"].fields[0].name == "other"
        )
