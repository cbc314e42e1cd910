"""The ``application/protobuf`` codec over the ``CODECS`` table, and generated protobuf classes
as handler types."""

from __future__ import annotations

from types import ModuleType

import orjson
import pytest
from pydantic import BaseModel, ValidationError

from asgi_micro.codec import (
    CODECS,
    JSON,
    PROTOBUF,
    MessageType,
    codec_for_accept,
    codec_for_content_type,
)
from asgi_micro.errors import BadRequest, NotAcceptable, UnsupportedMediaType
from asgi_micro.protobuf import ProtoMethod, ProtoSchema, render_proto

from .conftest import Compile


class HelloRequest(BaseModel):
    name: str
    times: int = 1


class TestTable:
    def test_registered_for_both_content_types(self) -> None:
        assert CODECS["application/protobuf"] is PROTOBUF
        assert CODECS["application/x-protobuf"] is PROTOBUF
        assert codec_for_content_type("application/x-protobuf; proto=greeter.Hello") is PROTOBUF
        assert codec_for_accept("application/json;q=0.5, application/protobuf") is PROTOBUF

    def test_round_trip_through_the_table(self) -> None:
        codec = CODECS["application/protobuf"]
        message_type = MessageType(HelloRequest)
        data = codec.encode(HelloRequest(name="Ada", times=2), message_type)
        assert data == b"\x0a\x03Ada\x10\x02"
        assert codec.decode(data, message_type) == HelloRequest(name="Ada", times=2)

    def test_a_schema_binds_the_converter_its_message_types_use(self) -> None:
        message_type = MessageType(HelloRequest)
        schema = ProtoSchema(package="greeter")
        schema.add_service("Greeter", [ProtoMethod("Hello", message_type, None)])
        schema.build()
        converter = schema.converter(HelloRequest)
        assert message_type.extension["protobuf"] is converter
        assert PROTOBUF.decode(b"\x0a\x01x\x10\x03", message_type) == HelloRequest(
            name="x", times=3
        )

    def test_a_model_without_a_message_type_is_encoded_by_its_class(self) -> None:
        # times defaults to 1, so it has presence: 0 is sent.
        assert PROTOBUF.encode(HelloRequest(name="a", times=0)) == b"\x0a\x01a\x10\x00"

    def test_nothing_is_an_empty_message(self) -> None:
        assert PROTOBUF.encode(None) == b""
        assert PROTOBUF.encode({}) == b""

    def test_plain_values_have_no_message_type(self) -> None:
        with pytest.raises(NotAcceptable, match="dict has no protobuf message type"):
            PROTOBUF.encode({"name": "a"})

    def test_decoding_needs_a_message_type(self) -> None:
        with pytest.raises(UnsupportedMediaType, match="do not say which message they hold"):
            PROTOBUF.decode(b"\x0a\x01a")

    def test_types_that_are_not_messages(self) -> None:
        message_type = MessageType(list[int])
        with pytest.raises(NotAcceptable, match=r"cannot reply in protobuf: .*list\[int\]"):
            PROTOBUF.encode([1], message_type)
        with pytest.raises(UnsupportedMediaType, match="this endpoint does not take protobuf"):
            PROTOBUF.decode(b"", message_type)

    def test_bad_input(self) -> None:
        message_type = MessageType(HelloRequest)
        with pytest.raises(BadRequest, match="not a valid"):
            PROTOBUF.decode(b"\xff", message_type)
        with pytest.raises(BadRequest, match=r"HelloRequest\.times \(field 2\)"):
            PROTOBUF.decode(b"\x12\x01a", message_type)
        with pytest.raises(ValidationError):
            PROTOBUF.encode({"name": 1}, message_type)


POINT_PROTO = """\
syntax = "proto3";
package {package};
import "google/protobuf/timestamp.proto";

message Point {{
  double lat = 1;
  double lng = 2;
  int64 visits = 3;
  google.protobuf.Timestamp seen = 4;
  repeated string labels = 5;
}}
"""


@pytest.fixture
def geo(package: str, compile_proto: Compile) -> ModuleType:
    """A user's own .proto, compiled with protoc as they would."""
    return compile_proto(
        {f"{package}/geo.proto": POINT_PROTO.format(package=f"{package}.geo")}, f"{package}.geo_pb2"
    )


class TestGeneratedClasses:
    def test_json_through_json_format(self, geo: ModuleType) -> None:
        message_type = MessageType(geo.Point)
        point = message_type.validate_json(
            b'{"lat": 1.5, "visits": "7", "seen": "2024-01-01T00:00:00Z"}'
        )
        assert isinstance(point, geo.Point)
        assert (point.lat, point.visits, point.seen.seconds) == (1.5, 7, 1704067200)
        assert orjson.loads(message_type.dump_json(point)) == {
            "lat": 1.5,
            "lng": 0.0,
            "visits": 7,
            "seen": "2024-01-01T00:00:00Z",
            "labels": [],
        }
        assert JSON.decode(JSON.encode(point, message_type), message_type) == point

    def test_python_values(self, geo: ModuleType) -> None:
        message_type = MessageType(geo.Point)
        point = geo.Point(lat=1.0, labels=["a"])
        assert message_type.validate_python(point) is point
        assert message_type.validate_python({"lat": 1.0, "labels": ["a"]}) == point
        assert message_type.dump_python(point)["labels"] == ["a"]

    def test_invalid_json_is_a_bad_request(self, geo: ModuleType) -> None:
        message_type = MessageType(geo.Point)
        with pytest.raises(BadRequest, match="lat"):
            message_type.validate_json(b'{"lat": "north"}')
        with pytest.raises(BadRequest, match="nope"):
            message_type.validate_python({"nope": 1})
        with pytest.raises(BadRequest, match=r"expected .*Point or a dict"):
            message_type.validate_python([1])

    def test_protobuf_bytes_are_native(self, geo: ModuleType) -> None:
        message_type = MessageType(geo.Point)
        point = geo.Point(lat=2.0, visits=3)
        data = PROTOBUF.encode(point, message_type)
        assert data == point.SerializeToString()
        assert PROTOBUF.decode(data, message_type) == point
        with pytest.raises(BadRequest, match="not a valid"):
            PROTOBUF.decode(b"\x0a", message_type)

    def test_a_schema_imports_them_without_conversion(
        self, package: str, geo: ModuleType, compile_proto: Compile
    ) -> None:
        class Place(BaseModel):
            name: str

        schema = ProtoSchema(package=f"{package}.maps")
        schema.add_service(
            "Maps",
            [ProtoMethod("Locate", Place, geo.Point), ProtoMethod("Nearest", geo.Point, Place)],
        )
        converter = schema.converter(geo.Point)
        point = geo.Point(lat=1.0)
        assert converter.to_message(point) is point
        assert converter.decode(converter.encode(point)) == point
        assert schema.pool.FindMessageTypeByName(f"{package}.geo.Point")
        text = render_proto(schema)
        assert f'import "{package}/geo.proto";' in text
        assert f"rpc Locate(Place) returns ({package}.geo.Point);" in text

        generated = compile_proto({schema.file_name: text}, f"{package}.maps_pb2")
        method = generated.DESCRIPTOR.services_by_name["Maps"].methods_by_name["Locate"]
        assert method.output_type.full_name == f"{package}.geo.Point"
