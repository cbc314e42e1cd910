"""Bad input is the caller's fault, in every codec and on every protocol.

A body or frame that does not decode is a ``BadRequest``: HTTP 400 in Go Micro's shape (unary,
NDJSON, SSE and the FastAPI path), a WebSocket closed with 4400, gRPC ``INVALID_ARGUMENT``;
never a 500, never a server error in ``/_micro/stats``, never a traceback in the log. The codecs
are fuzzed with arbitrary bytes, mutated valid encodings and, for protobuf, well-formed messages
holding any value the wire allows.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import json
import logging
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import msgpack
import orjson
import pytest
from fastapi import FastAPI, Request
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2, wrappers_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, ValidationError
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from asgi_micro import MicroRouter, Service
from asgi_micro.codec import CODECS, MSGPACK, Codec, message_type
from asgi_micro.errors import BadRequest, UnsupportedMediaType
from asgi_micro.grpc import ERROR_KEY
from asgi_micro.pipeline import Call, Next
from asgi_micro.protobuf.codec import message_converter
from asgi_micro.registry.memory import MemoryRegistry
from tests.helpers import free_port, serve

# -- what the codecs decode into ----------------------------------------------------------------


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Part(BaseModel):
    name: str = ""
    count: int = Field(default=0, ge=0)
    when: dt.datetime | None = None


class Everything(BaseModel):
    """A field of each kind the codecs map."""

    number: int = 0
    ratio: float = 0.0
    flag: bool = False
    text: str = ""
    blob: bytes = b""
    id: uuid.UUID | None = None
    price: decimal.Decimal | None = None
    at: dt.datetime | None = None
    wait: dt.timedelta | None = None
    day: dt.date | None = None
    color: Color = Color.RED
    part: Part | None = None
    parts: list[Part] = []
    counts: dict[str, int] = {}
    parts_by_number: dict[int, Part] = {}
    tags: set[str] = set()
    anything: Any = None
    maybe: int | None = None


class Tree(BaseModel):
    """Recursive, so that nesting is only bounded by the codec."""

    name: str = ""
    children: list[Tree] = []


TARGETS: list[type[Any]] = [
    Everything,
    Tree,
    struct_pb2.Struct,  # generated classes take json_format's path in JSON and msgpack
    timestamp_pb2.Timestamp,
    duration_pb2.Duration,
    wrappers_pb2.StringValue,  # a scalar in JSON, so any dict is the wrong shape
]
SAMPLES: dict[type[Any], list[Any]] = {
    Everything: [
        Everything(),
        Everything(
            number=-(2**40),
            ratio=2.5,
            flag=True,
            text="héllo",
            blob=b"\x00\x01",  # JSON carries bytes as UTF-8
            id=uuid.UUID(int=7),
            price=decimal.Decimal("12.50"),
            at=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
            wait=dt.timedelta(seconds=90),
            day=dt.date(2026, 1, 2),
            color=Color.BLUE,
            part=Part(name="a", count=1),
            parts=[Part(name="b"), Part(when=dt.datetime(2000, 1, 1, tzinfo=dt.UTC))],
            counts={"x": 1},
            parts_by_number={3: Part(name="c")},
            tags={"t"},
            anything={"nested": [1, "two", None]},
            maybe=5,
        ),
    ],
    Tree: [Tree(name="root", children=[Tree(name="leaf", children=[Tree()])])],
    struct_pb2.Struct: [struct_pb2.Struct(fields={"a": struct_pb2.Value(number_value=1.5)})],
    timestamp_pb2.Timestamp: [timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=5000)],
    duration_pb2.Duration: [duration_pb2.Duration(seconds=-3, nanos=-500)],
    wrappers_pb2.StringValue: [wrappers_pb2.StringValue(value="x")],
}
CODEC_LIST = list({id(codec): codec for codec in CODECS.values()}.values())


def decodes_untyped(codec: Codec) -> bool:
    """Whether ``codec`` reads bytes without a message type (protobuf cannot: the bytes do
    not say which message they hold)."""
    try:
        codec.decode(codec.encode(None))
    except UnsupportedMediaType:
        return False
    return True


def codec_id(codec: Codec) -> str:
    return codec.content_type


def target_id(target: type[Any]) -> str:
    return target.__name__


# -- generated input ----------------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, encodings: list[bytes]) -> bytes:
    """A valid encoding cut short, spliced with random bytes, with a byte changed, or doubled."""
    data = draw(st.sampled_from(encodings))
    how = draw(st.sampled_from(["truncate", "insert", "flip", "double"]))
    at = draw(st.integers(0, len(data)))
    if how == "truncate":
        return data[:at]
    if how == "insert":
        return data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    if how == "flip" and data:
        at = min(at, len(data) - 1)
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    return data + data


def inputs(codec: Codec, target: type[Any] | None) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, and what comes close to the codec's own encodings."""
    if target is None:
        samples: list[Any] = [{"a": [1, 2.5, None, "x", {"b": True}]}, [1, "two"], "text", 3]
        encodings = [codec.encode(sample) for sample in samples]
    else:
        target_type = message_type(target)
        encodings = [codec.encode(sample, target_type) for sample in SAMPLES[target]]
    encodings = [encoding for encoding in encodings if encoding] or [b"\x00"]
    return st.binary(max_size=96) | mutated(encodings)


_INT_RANGES = {
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_ENUM: (-(2**31), 2**31 - 1),  # open enums: any number is kept
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
}


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    if field.type in _INT_RANGES:
        low, high = _INT_RANGES[field.type]
        return st.integers(low, high)
    if field.type == FieldDescriptor.TYPE_DOUBLE:
        return st.floats()
    if field.type == FieldDescriptor.TYPE_FLOAT:
        return st.floats(width=32)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type == FieldDescriptor.TYPE_STRING:
        return st.text(max_size=8)
    return st.binary(max_size=8)


def _fill(draw: st.DrawFn, message: Any, depth: int) -> None:
    """Set a random selection of ``message``'s fields to any value their wire type allows."""
    descriptor: Descriptor = message.DESCRIPTOR
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        value = getattr(message, field.name)
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
            for key in draw(st.lists(_scalar(key_field), max_size=2)):
                if value_field.message_type is None:
                    value[key] = draw(_scalar(value_field))
                elif depth:
                    _fill(draw, value[key], depth - 1)
        elif entry is not None:
            if not depth:
                continue
            for _ in range(draw(st.integers(1, 2)) if field.is_repeated else 1):
                item = value.add() if field.is_repeated else value
                item.SetInParent()
                _fill(draw, item, depth - 1)
        elif field.is_repeated:
            value.extend(draw(st.lists(_scalar(field), max_size=3)))
        else:
            setattr(message, field.name, draw(_scalar(field)))


@st.composite
def wire_messages(draw: st.DrawFn, message_class: type[Message]) -> bytes:
    """A well-formed message of ``message_class`` whose fields hold anything the wire allows
    (a Timestamp of year 10**11, an unknown enum number...)."""
    message = message_class()
    _fill(draw, message, depth=3)
    return message.SerializeToString()


def message_class_of(target: type[Any]) -> type[Message]:
    return message_converter(message_type(target)).message_class


# -- the codecs, fuzzed -------------------------------------------------------------------------

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decode_or_bad_request(codec: Codec, data: bytes, target: type[Any] | None) -> None:
    """Decoding ``data`` succeeds or raises ``BadRequest``; with a message type, pydantic's
    ``ValidationError`` too, which every entry point turns into a ``BadRequest``. Anything
    else fails the test."""
    error: BadRequest | ValidationError | None = None
    try:
        codec.decode(data, None if target is None else message_type(target))
    except (BadRequest, ValidationError) as exc:
        error = exc
    if isinstance(error, ValidationError):
        assert target is not None
        error = BadRequest.from_validation(error)
    if error is not None:
        assert error.code == 400
        assert error.detail


@pytest.mark.parametrize(
    "codec", [codec for codec in CODEC_LIST if decodes_untyped(codec)], ids=codec_id
)
def test_any_bytes_decode_or_are_a_bad_request(codec: Codec) -> None:
    @FUZZ
    @given(inputs(codec, None))
    def check(data: bytes) -> None:
        decode_or_bad_request(codec, data, None)

    check()


@pytest.mark.parametrize("target", TARGETS, ids=target_id)
@pytest.mark.parametrize("codec", CODEC_LIST, ids=codec_id)
def test_any_bytes_decode_into_a_type_or_are_a_bad_request(codec: Codec, target: type[Any]) -> None:
    @FUZZ
    @given(inputs(codec, target))
    def check(data: bytes) -> None:
        decode_or_bad_request(codec, data, target)

    check()


@pytest.mark.parametrize(
    "codec", [codec for codec in CODEC_LIST if not decodes_untyped(codec)], ids=codec_id
)
def test_a_codec_that_needs_a_type_refuses_any_bytes_without_one(codec: Codec) -> None:
    @FUZZ
    @given(st.binary(max_size=32))
    def check(data: bytes) -> None:
        with pytest.raises(UnsupportedMediaType):
            codec.decode(data)

    check()


@pytest.mark.parametrize("target", TARGETS, ids=target_id)
def test_well_formed_protobuf_with_any_field_values_decodes_or_is_a_bad_request(
    target: type[Any],
) -> None:
    protobuf = CODECS["application/protobuf"]

    @FUZZ
    @given(wire_messages(message_class_of(target)))
    def check(data: bytes) -> None:
        decode_or_bad_request(protobuf, data, target)

    check()


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=12,
)
_FIELD_NAMES = st.sampled_from(
    sorted({*Everything.model_fields, *Part.model_fields, "children", "fields", "seconds"})
)
_MSGPACK_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(_FIELD_NAMES | st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=16,
)


@pytest.mark.parametrize("target", TARGETS, ids=target_id)
@pytest.mark.parametrize(
    ("content_type", "values", "encode"),
    [
        ("application/json", _JSON_VALUES, lambda value: json.dumps(value).encode()),
        ("application/msgpack", _MSGPACK_VALUES, msgpack.packb),
    ],
    ids=["json", "msgpack"],
)
def test_values_of_the_wrong_shape_are_a_bad_request(
    content_type: str,
    values: st.SearchStrategy[Any],
    encode: Callable[[Any], bytes],
    target: type[Any],
) -> None:
    """Well-formed JSON and msgpack holding anything where the fields go."""
    codec = CODECS[content_type]

    @FUZZ
    @given(values)
    def check(value: Any) -> None:
        decode_or_bad_request(codec, encode(value), target)

    check()


# -- the cases of issue 11, one by one ----------------------------------------------------------

_HELLO = msgpack.packb({"text": "hello"})
MALFORMED_MSGPACK = {
    "truncated": (_HELLO[:-2], "the input ends inside the value"),
    "extra data": (_HELLO + b"\xc0", "extra bytes after the value"),
    "int map key": (msgpack.packb({1: "hello"}), "map keys must be strings, got int"),
    "float map key": (b"\x81\xcb" + bytes(8) + b"\xc0", "map keys must be strings, got float"),
    "invalid UTF-8 value": (b"\x81\xa4text\xa2\xff\xfe", "a string is not UTF-8"),
    "invalid UTF-8 key": (b"\x81\xa2\xff\xfe\xa1x", "a string is not UTF-8"),
    "deep nesting": (b"\x91" * 100_000 + b"\xc0", "nested too deeply"),
    "deep maps": (b"\x81\xa1a" * 50_000 + b"\xc0", "nested too deeply"),
    "str32 of 4 GiB": (b"\xdb\xff\xff\xff\xff", "the input ends inside the value"),
    "bin32 of 4 GiB": (b"\xc6\xff\xff\xff\xff", "the input ends inside the value"),
    "array32 of 4 Gi items": (b"\xdd\xff\xff\xff\xff", "exceeds max_array_len"),
    "map32 of 4 Gi items": (b"\xdf\xff\xff\xff\xff", "exceeds max_map_len"),
    "ext32 of 4 GiB": (b"\xc9\xff\xff\xff\xff\x01", "exceeds max_ext_len"),
    "reserved byte": (b"\xc1", "a reserved type byte"),
    "bad timestamp": (b"\xd4\xff\x00", "invalid timestamp data"),
}


@pytest.mark.parametrize("target", [None, Part], ids=["untyped", "typed"])
@pytest.mark.parametrize(
    ("data", "reason"), MALFORMED_MSGPACK.values(), ids=list(MALFORMED_MSGPACK)
)
def test_malformed_msgpack_is_a_bad_request_saying_what_is_wrong(
    data: bytes, reason: str, target: type[Any] | None
) -> None:
    with pytest.raises(BadRequest) as caught:
        MSGPACK.decode(data, None if target is None else message_type(target))
    assert caught.value.detail.startswith("invalid msgpack: ")
    assert reason in caught.value.detail


@pytest.mark.parametrize(
    "header",
    [
        b"\xdb\xff\xff\xff\xff",
        b"\xc6\xff\xff\xff\xff",
        b"\xdd\xff\xff\xff\xff",
        b"\xdf\xff\xff\xff\xff",
    ],
    ids=["str32", "bin32", "array32", "map32"],
)
def test_a_huge_length_header_is_refused_before_allocating(header: bytes) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(BadRequest):
            MSGPACK.decode(header)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


@pytest.mark.parametrize(
    ("field", "seconds"),
    [("at", 2**62), ("at", -(2**62)), ("wait", 2**62)],
    ids=["timestamp after 9999", "timestamp before 1", "duration over 10**9 days"],
)
def test_an_out_of_range_protobuf_time_is_a_bad_request(field: str, seconds: int) -> None:
    message = message_class_of(Everything)()
    getattr(message, field).seconds = seconds  # any int64 is a valid Timestamp on the wire
    data = message.SerializeToString()
    with pytest.raises(BadRequest, match="out of range"):
        CODECS["application/protobuf"].decode(data, message_type(Everything))


# -- over the wire ------------------------------------------------------------------------------


class Note(BaseModel):
    text: str = ""
    at: dt.datetime | None = None
    replies: list[Note] = []


fuzz = MicroRouter("Fuzz")


@fuzz.rpc()
async def echo(req: Note) -> Note:
    return req


@fuzz.rpc()
async def notes(req: Note) -> AsyncIterator[Note]:
    yield req


@fuzz.rpc()
async def chat(requests: AsyncIterator[Note]) -> AsyncIterator[Note]:
    async for req in requests:
        yield req


@fuzz.rpc()
async def raw(req: Note, request: Request) -> Note:
    """Served by FastAPI (it takes the Request)."""
    return req


def _protobuf(note: Note) -> bytes:
    return CODECS["application/protobuf"].encode(note, message_type(Note))


def _protobuf_field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _nested_protobuf(depth: int) -> bytes:
    data = b""
    for _ in range(depth):
        data = _protobuf_field(3, data)  # replies
    return data


def _varint(number: int) -> bytes:
    out = bytearray()
    while number > 0x7F:
        out.append(number & 0x7F | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


MALFORMED = {
    "application/msgpack": {name: data for name, (data, _) in MALFORMED_MSGPACK.items()},
    "application/json": {
        "truncated": b'{"text": "hel',
        "extra data": b'{"text": "hello"} {}',
        "invalid UTF-8": b'{"text": "\xff\xfe"}',
        "deep nesting": b'{"replies": ' + b"[" * 100_000,
        "not an object": b"[1, 2]",
    },
    "application/protobuf": {
        "truncated": _protobuf(Note(text="hello"))[:-2],
        "length of 4 GiB": b"\n\xff\xff\xff\xff\x0f",
        "invalid UTF-8": b"\n\x02\xff\xfe",
        "deep nesting": _nested_protobuf(200),
        "wrong wire type": b"\x08\x01",  # text as a varint
        "field number 0": b"\x00\x01",
        "timestamp after 9999": _protobuf_field(2, b"\x08" + _varint(2**62)),  # at.seconds
    },
}
VALID = {
    "application/msgpack": msgpack.packb({"text": "ok"}),
    "application/json": b'{"text": "ok"}',
    "application/protobuf": _protobuf(Note(text="ok")),
}


@dataclass
class Fuzzed:
    service: Service
    http: str
    grpc: str
    passed: list[str]


@pytest.fixture
async def served() -> AsyncIterator[Fuzzed]:
    port = free_port()
    service = Service(
        "fuzz", registry=MemoryRegistry(), address=f"127.0.0.1:{port}", drain_grace=0.0
    )
    passed: list[str] = []

    @service.wrap
    async def record(call: Call, next: Next) -> Any:
        # A wrapper makes the FastAPI path decode the body itself, in any codec.
        passed.append(call.endpoint)
        return await next(call)

    app = FastAPI(lifespan=service.lifespan)
    app.include_router(fuzz)
    async with serve(app, port=port) as address:
        await service.wait_registered()
        assert service.grpc_server is not None
        assert service.grpc_server.address is not None
        yield Fuzzed(service, address, service.grpc_server.address, passed)


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What was logged at ERROR or above, or with a traceback, while the test ran."""
    return [
        f"{record.name}: {record.getMessage()}"
        for record in caplog.records
        if record.levelno >= logging.ERROR or record.exc_info is not None
    ]


async def _stats(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get("/_micro/stats")
    assert response.status_code == 200
    stats: dict[str, Any] = response.json()
    return stats


def _is_bad_request(body: Any) -> bool:
    return (
        isinstance(body, dict)
        and set(body) == {"id", "code", "detail", "status"}
        and (body["id"], body["code"], body["status"]) == ("fuzz", 400, "Bad Request")
        and isinstance(body["detail"], str)
        and bool(body["detail"])
    )


def _bad_request_saying(response: httpx.Response, prefix: str) -> bool:
    if response.status_code != 400:
        return False
    body = response.json()
    return _is_bad_request(body) and body["detail"].startswith(prefix)


DETAIL_PREFIXES = {"application/msgpack": "invalid msgpack: "}
HTTP_PATHS = [
    ("/fuzz/echo", "application/json"),
    ("/fuzz/notes", "application/x-ndjson"),
    ("/fuzz/notes", "text/event-stream"),
    ("/fuzz/raw", "application/json"),
]


async def test_a_malformed_body_is_a_400_on_every_http_path(
    served: Fuzzed, caplog: pytest.LogCaptureFixture
) -> None:
    wrong: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=f"http://{served.http}", trust_env=False) as http:
        for path, accept in HTTP_PATHS:
            for content_type, bodies in MALFORMED.items():
                headers = {"content-type": content_type, "accept": accept}
                valid = await http.post(path, content=VALID[content_type], headers=headers)
                if valid.status_code != 200 or '"ok"' not in valid.text:
                    wrong[f"{path} {accept} {content_type} valid"] = (valid.status_code, valid.text)
                for name, body in bodies.items():
                    response = await http.post(path, content=body, headers=headers)
                    if not _bad_request_saying(response, DETAIL_PREFIXES.get(content_type, "")):
                        wrong[f"{path} {accept} {content_type} {name}"] = (
                            response.status_code,
                            response.text,
                        )
        stats = await _stats(http)
    assert wrong == {}
    calls = len(HTTP_PATHS) * sum(len(bodies) + 1 for bodies in MALFORMED.values())
    assert stats["requests"] >= calls
    assert stats["errors"] == 0
    assert errors_logged(caplog) == []
    # Only the valid bodies reached the wrappers.
    assert len(served.passed) == len(HTTP_PATHS) * len(VALID)


@pytest.mark.parametrize("subprotocol", ["msgpack", "protobuf"])
async def test_a_malformed_frame_closes_a_websocket_with_4400(
    served: Fuzzed, caplog: pytest.LogCaptureFixture, subprotocol: str
) -> None:
    content_type = f"application/{subprotocol}"
    closed: dict[str, Any] = {}
    for name, frame in MALFORMED[content_type].items():
        async with connect(
            f"ws://{served.http}/fuzz/chat", subprotocols=[Subprotocol(subprotocol)]
        ) as socket:
            await socket.send(VALID[content_type])
            await socket.recv()  # the echo: the socket works until the bad frame
            await socket.send(frame)
            try:
                closed[name] = ("not closed", await socket.recv())
            except ConnectionClosed as exc:
                received = exc.rcvd
                reason = orjson.loads(received.reason) if received else {}
                closed[name] = (received and received.code, reason.get("id"), reason.get("code"))
    assert closed == dict.fromkeys(MALFORMED[content_type], (4400, "fuzz", 400))
    async with httpx.AsyncClient(base_url=f"http://{served.http}", trust_env=False) as http:
        stats = await _stats(http)
    assert stats["errors"] == 0
    assert errors_logged(caplog) == []


async def test_a_malformed_message_is_invalid_argument_over_grpc(
    served: Fuzzed, caplog: pytest.LogCaptureFixture
) -> None:
    wrong: dict[str, Any] = {}
    async with grpc.aio.insecure_channel(served.grpc) as channel:
        unary = channel.unary_unary("/fuzz.Fuzz/Echo")
        server_stream = channel.unary_stream("/fuzz.Fuzz/Notes")
        bidi = channel.stream_stream("/fuzz.Fuzz/Chat")
        valid = VALID["application/protobuf"]
        for name, body in MALFORMED["application/protobuf"].items():

            async def call_unary(body: bytes = body) -> Any:
                return await unary(body, timeout=10)

            async def call_server_stream(body: bytes = body) -> Any:
                return await server_stream(body, timeout=10).read()

            async def call_bidi(body: bytes = body) -> Any:
                call = bidi(iter([valid, body]), timeout=10)
                assert await call.read() == valid  # the stream works until the bad message
                return await call.read()

            calls = {"unary": call_unary, "server stream": call_server_stream, "bidi": call_bidi}
            for kind, call in calls.items():
                try:
                    wrong[f"{kind} {name}"] = ("answered", await call())
                except grpc.aio.AioRpcError as exc:
                    error = dict(exc.trailing_metadata() or ()).get(ERROR_KEY)
                    shaped = error is not None and _is_bad_request(orjson.loads(error))
                    if exc.code() != grpc.StatusCode.INVALID_ARGUMENT or not shaped:
                        wrong[f"{kind} {name}"] = (exc.code(), exc.details(), error)
        assert await unary(valid, timeout=10) == valid  # and the server serves on
    assert wrong == {}
    async with httpx.AsyncClient(base_url=f"http://{served.http}", trust_env=False) as http:
        stats = await _stats(http)
    assert stats["errors"] == 0
    assert errors_logged(caplog) == []
