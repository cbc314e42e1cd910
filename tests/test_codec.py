from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pytest
from pydantic import BaseModel, ValidationError

from asgi_micro.codec import (
    CODECS,
    JSON,
    MessageType,
    codec_for_accept,
    codec_for_content_type,
    message_type,
)
from asgi_micro.errors import BadRequest


class Order(BaseModel):
    id: uuid.UUID
    placed: dt.datetime
    total: Decimal
    items: list[str]


ORDER = Order(
    id=uuid.UUID(int=7),
    placed=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
    total=Decimal("12.50"),
    items=["a", "b"],
)


@pytest.mark.parametrize("content_type", ["application/json", "application/msgpack"])
def test_models_round_trip(content_type: str) -> None:
    codec = CODECS[content_type]
    order_type = message_type(Order)
    assert codec.decode(codec.encode(ORDER, order_type), order_type) == ORDER
    assert codec.decode(codec.encode(ORDER), order_type) == ORDER  # without the type too


@pytest.mark.parametrize("content_type", ["application/json", "application/msgpack"])
def test_untyped_values(content_type: str) -> None:
    codec = CODECS[content_type]
    assert codec.decode(codec.encode({"a": [1, 2.5, None, "x"]})) == {"a": [1, 2.5, None, "x"]}
    assert codec.decode(b"") is None


def test_validation_errors_name_fields() -> None:
    with pytest.raises(ValidationError) as info:
        JSON.decode(b'{"id": "nope"}', message_type(Order))
    assert {error["loc"][0] for error in info.value.errors()} == {"id", "placed", "total", "items"}


def test_msgpack_rejects_garbage() -> None:
    with pytest.raises(BadRequest, match="invalid msgpack"):
        CODECS["application/msgpack"].decode(b"\xc1\xc1\xc1")


def test_message_types_are_cached_and_not_only_models() -> None:
    assert message_type(Order) is message_type(Order)
    numbers = MessageType(list[int])
    assert JSON.decode(b"[1, 2]", numbers) == [1, 2]
    assert JSON.encode([3], numbers) == b"[3]"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("", "application/json"),
        ("application/json", "application/json"),
        ("Application/JSON; charset=utf-8", "application/json"),
        ("application/problem+json", "application/json"),
        ("application/x-msgpack", "application/msgpack"),
        ("text/xml", None),
    ],
)
def test_content_type_negotiation(header: str, expected: str | None) -> None:
    codec = codec_for_content_type(header)
    assert (codec.content_type if codec else None) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("", "application/json"),
        ("*/*", "application/json"),
        ("application/msgpack", "application/msgpack"),
        ("text/html, application/msgpack;q=0.5, application/json;q=0.9", "application/json"),
        ("application/json;q=0, application/msgpack", "application/msgpack"),
        ("application/json;q=bad, application/msgpack;q=0.1", "application/msgpack"),
        ("text/html", None),
    ],
)
def test_accept_negotiation(header: str, expected: str | None) -> None:
    codec = codec_for_accept(header)
    assert (codec.content_type if codec else None) == expected
