"""Models -> protobuf bytes -> models: every supported type round trips exactly, and bad input
fails with the documented error."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import math
import uuid
from typing import Annotated, Any, Literal, NewType

import pytest
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticSerializationError

from asgi_micro.errors import BadRequest
from asgi_micro.protobuf import MessageConverter, ProtoSchema


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    OFF = 0
    LOW = 1
    HIGH = 2


class Priority(enum.IntEnum):
    LOW = 10
    HIGH = -3


class Mixed(enum.Enum):
    ONE = 1
    TWO = "two"
    THREE = (3,)


class Child(BaseModel):
    name: str = ""
    kids: list[Child] = []


UserId = NewType("UserId", int)


def converter_for(model: type[BaseModel]) -> MessageConverter:
    schema = ProtoSchema(package="roundtrip")
    schema.add_message(model)
    return schema.converter(model)


def round_trip(value: BaseModel) -> BaseModel:
    converter = converter_for(type(value))
    data = converter.encode(value)
    assert isinstance(data, bytes)
    return converter.decode(data)  # type: ignore[no-any-return]


def assert_exact(expected: Any, actual: Any, path: str = "value") -> None:
    """Equal, and of the same types all the way down (``1 == 1.0`` is not enough)."""
    assert type(actual) is type(expected), f"{path}: {type(actual)} is not {type(expected)}"
    if isinstance(expected, BaseModel):
        for name in type(expected).model_fields:
            assert_exact(getattr(expected, name), getattr(actual, name), f"{path}.{name}")
    elif isinstance(expected, dict):
        assert list(actual) == list(expected) or set(actual) == set(expected), path
        for key in expected:
            assert_exact(expected[key], actual[key], f"{path}[{key!r}]")
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected), path
        for index, (left, right) in enumerate(zip(expected, actual, strict=True)):
            assert_exact(left, right, f"{path}[{index}]")
    elif isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(actual), path
    elif isinstance(expected, dt.datetime | dt.time):
        assert actual == expected, path
        assert actual.utcoffset() == expected.utcoffset(), path
    else:
        assert actual == expected, path


UTC = dt.UTC
ROUND_TRIPS: list[tuple[str, Any, list[Any]]] = [
    ("str", str, ["", "héllo ✓", "x" * 5000]),
    ("int", int, [0, 1, -1, 2**63 - 1, -(2**63)]),
    ("float", float, [0.0, -1.5, 1e308, 5e-324, math.inf, -math.inf, math.nan]),
    ("bool", bool, [True, False]),
    ("bytes", bytes, [b"", b"\x00\xff" * 100]),
    ("str enum", Color, list(Color)),
    ("int enum with zero", Level, list(Level)),
    ("int enum without zero", Priority, list(Priority)),
    ("enum of mixed values", Mixed, list(Mixed)),
    ("model", Child, [Child(), Child(name="a", kids=[Child(name="b", kids=[Child(name="c")])])]),
    ("list[int]", list[int], [[], [1, -2, 2**40]]),
    ("list[str]", list[str], [["a", "", "b"]]),
    ("list[model]", list[Child], [[Child(name="a"), Child()]]),
    ("list[enum]", list[Color], [[Color.GREEN, Color.RED]]),
    ("tuple[int, ...]", tuple[int, ...], [(), (1, 2)]),
    ("set[str]", set[str], [set(), {"a", "b"}]),
    ("frozenset[int]", frozenset[int], [frozenset({1, 2})]),
    ("dict[str, int]", dict[str, int], [{}, {"a": 1, "": -2}]),
    ("dict[int, str]", dict[int, str], [{1: "a", -5: ""}]),
    ("dict[bool, float]", dict[bool, float], [{True: 1.5, False: -0.0}]),
    ("dict[str, model]", dict[str, Child], [{"x": Child(name="y"), "z": Child()}]),
    ("dict[str, enum]", dict[str, Level], [{"a": Level.OFF, "b": Level.HIGH}]),
    ("dict[str, datetime]", dict[str, dt.datetime], [{"a": dt.datetime(2020, 1, 1, tzinfo=UTC)}]),
    ("int | None", int | None, [None, 0, 7]),
    ("str | None", str | None, [None, ""]),
    ("float | None", float | None, [None, 0.0]),
    ("bool | None", bool | None, [None, False]),
    ("bytes | None", bytes | None, [None, b""]),
    ("enum | None", Color | None, [None, Color.RED]),
    ("int enum | None", Level | None, [None, Level.OFF, Level.LOW]),
    ("model | None", Child | None, [None, Child(), Child(name="x")]),
    (
        "datetime",
        dt.datetime,
        [
            dt.datetime(2024, 5, 17, 12, 30, 45, 123456, tzinfo=UTC),
            dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
            dt.datetime(1, 1, 1, tzinfo=UTC),
            dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        ],
    ),
    ("datetime | None", dt.datetime | None, [None, dt.datetime(1970, 1, 1, tzinfo=UTC)]),
    (
        "timedelta",
        dt.timedelta,
        [
            dt.timedelta(0),
            dt.timedelta(seconds=-1.5),
            dt.timedelta(days=-3, microseconds=7),
            dt.timedelta(days=9999, microseconds=999999),
        ],
    ),
    ("UUID", uuid.UUID, [uuid.UUID(int=0), uuid.uuid4()]),
    ("UUID | None", uuid.UUID | None, [None, uuid.uuid4()]),
    (
        "Decimal",
        decimal.Decimal,
        [decimal.Decimal("1.10"), decimal.Decimal("-0"), decimal.Decimal("1E+20")],
    ),
    ("date", dt.date, [dt.date(2024, 2, 29), dt.date(1, 1, 1)]),
    ("time", dt.time, [dt.time(0, 0), dt.time(23, 59, 59, 999999)]),
    ("time with offset", dt.time, [dt.time(8, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))]),
    ("list[datetime]", list[dt.datetime], [[dt.datetime(2000, 1, 1, tzinfo=UTC)]]),
    ("list[timedelta]", list[dt.timedelta], [[dt.timedelta(hours=1), dt.timedelta(0)]]),
    ("list[UUID]", list[uuid.UUID], [[uuid.UUID(int=1), uuid.UUID(int=2)]]),
    ("dict[str, Any]", dict[str, Any], [{}, {"a": 1, "b": [True, None, "x", 2.5], "c": {"d": {}}}]),
    ("bare dict", dict, [{"k": [1, {"n": None}]}]),
    ("dict[str, Any] | None", dict[str, Any] | None, [None, {}]),
    ("Any", Any, [None, 1, 2.5, "s", True, [1, "a", None], {"a": {"b": [False]}}]),
    ("list[Any]", list[Any], [[], [1, [2, {"x": None}]]]),
    ("list[Any] | None", list[Any] | None, [None, []]),
    ("list[dict[str, Any]]", list[dict[str, Any]], [[{"a": 1}, {}]]),
    ("list[list[Any]]", list[list[Any]], [[[1, "a"], []]]),
    ("dict[str, dict[str, Any]]", dict[str, dict[str, Any]], [{"a": {"b": [1, None]}, "c": {}}]),
    ("dict[str, list[Any]]", dict[str, list[Any]], [{"a": [1, "x"], "b": []}]),
    ("dict[int, Any]", dict[int, Any], [{1: None, 2: "two", 3: [3]}]),
    ("Literal[str]", Literal["a", "b"], ["a", "b"]),
    ("Literal[int]", Literal[1, 2], [2]),
    ("Literal | None", Literal["a"] | None, [None, "a"]),
    ("Annotated constraints", Annotated[int, Field(ge=0, le=10)], [0, 10]),
    ("NewType", UserId, [UserId(5)]),
]


@pytest.mark.parametrize(
    ("annotation", "value"),
    [
        pytest.param(annotation, value, id=f"{name}={value!r}"[:60])
        for name, annotation, values in ROUND_TRIPS
        for value in values
    ],
)
def test_round_trip_is_exact(annotation: Any, value: Any) -> None:
    model = create_model("Case", value=(annotation, ...), other=(int, 5))
    original = model(value=value, other=3)
    assert_exact(original, round_trip(original))


def test_a_model_using_every_type_at_once_round_trips() -> None:
    class Everything(BaseModel):
        text: str
        number: int | None
        flags: set[str]
        color: Color
        level: Level | None
        child: Child | None
        by_name: dict[str, Child]
        when: dt.datetime
        took: dt.timedelta
        meta: dict[str, Any]
        anything: Any
        price: decimal.Decimal
        ident: uuid.UUID

    original = Everything(
        text="t",
        number=0,
        flags={"a"},
        color=Color.GREEN,
        level=None,
        child=Child(name="c"),
        by_name={"k": Child(kids=[Child(name="g")])},
        when=dt.datetime(2021, 3, 4, 5, 6, 7, 8, tzinfo=UTC),
        took=dt.timedelta(milliseconds=-250),
        meta={"list": [1, 2.5, "3", None, {"deep": True}]},
        anything=None,
        price=decimal.Decimal("19.99"),
        ident=uuid.uuid4(),
    )
    assert_exact(original, round_trip(original))


class TestDocumentedNormalisation:
    """Where protobuf cannot keep a Python distinction, what comes back is documented."""

    def test_datetimes_come_back_in_utc_at_the_same_instant(self) -> None:
        Model = create_model("WithTime", when=(dt.datetime, ...))
        zone = dt.timezone(dt.timedelta(hours=5, minutes=30))
        aware = Model(when=dt.datetime(2024, 1, 1, 10, 0, tzinfo=zone))
        back = round_trip(aware)
        assert back.when == aware.when  # type: ignore[attr-defined]
        assert back.when.tzinfo is UTC  # type: ignore[attr-defined]

    def test_naive_datetimes_are_read_as_utc(self) -> None:
        Model = create_model("WithTime", when=(dt.datetime, ...))
        back = round_trip(Model(when=dt.datetime(2024, 1, 1, 10, 0)))
        assert back.when == dt.datetime(2024, 1, 1, 10, 0, tzinfo=UTC)  # type: ignore[attr-defined]

    def test_nanoseconds_from_other_languages_are_truncated_to_microseconds(self) -> None:
        Model = create_model("WithTime", when=(dt.datetime, ...))
        converter = converter_for(Model)
        message = converter.message_class(when={"seconds": 1, "nanos": 1999})
        back = converter.decode(message.SerializeToString())
        assert back.when == dt.datetime(1970, 1, 1, 0, 0, 1, 1, tzinfo=UTC)

    def test_struct_numbers_are_doubles_and_whole_ones_come_back_as_int(self) -> None:
        Model = create_model("Free", data=(dict[str, Any], ...))
        back = round_trip(Model(data={"whole": 2.0, "big": 2**60, "half": 0.5}))
        assert back.data == {"whole": 2, "big": float(2**60), "half": 0.5}  # type: ignore[attr-defined]
        assert type(back.data["whole"]) is int  # type: ignore[attr-defined]
        assert type(back.data["big"]) is float  # type: ignore[attr-defined]


class TestPresence:
    def test_optional_scalars_keep_zero_apart_from_none(self) -> None:
        class Model(BaseModel):
            count: int | None = 5

        converter = converter_for(Model)
        assert converter.encode(Model(count=None)) == b""
        assert converter.encode(Model(count=0)) == b"\x08\x00"
        assert converter.decode(b"").count is None
        assert converter.decode(b"\x08\x00").count == 0

    def test_an_absent_message_takes_the_model_default(self) -> None:
        class Model(BaseModel):
            child: Child = Child(name="default")
            optional_child: Child | None = Child(name="ignored")

        back = converter_for(Model).decode(b"")
        assert back.child == Child(name="default")
        assert back.optional_child is None

    def test_an_absent_required_message_is_a_validation_error(self) -> None:
        class Model(BaseModel):
            child: Child

        with pytest.raises(ValidationError, match="child"):
            converter_for(Model).decode(b"")

    def test_an_empty_message_is_present(self) -> None:
        class Model(BaseModel):
            child: Child | None = None

        converter = converter_for(Model)
        assert converter.decode(converter.encode(Model(child=Child()))).child == Child()

    def test_absent_scalars_without_a_default_of_their_own_are_zero_values(self) -> None:
        class Model(BaseModel):
            name: str = ""
            count: int

        back = converter_for(Model).decode(b"")
        assert (back.name, back.count) == ("", 0)

    def test_absent_scalars_take_a_default_other_than_the_zero_value(self) -> None:
        class Model(BaseModel):
            count: int = Field(default=3, ge=1)
            mode: Literal["fast", "safe"] = "safe"
            flag: bool = True
            ratio: float = 0.5
            level: Level = Level.LOW
            tags: list[str] = Field(default_factory=list)
            zero: int = 0

        converter = converter_for(Model)
        assert converter.decode(b"") == Model()
        # The zero value, sent, stays the zero value: these fields have presence.
        sent = Model.model_construct(count=1, mode="fast", flag=False, ratio=0.0, level=Level.OFF)
        back = converter.decode(converter.encode(sent))
        assert (back.flag, back.ratio, back.level, back.mode) == (False, 0.0, Level.OFF, "fast")
        with pytest.raises(ValidationError, match="count"):  # 0 is sent, and fails ge=1
            converter.decode(converter.message_class(count=0).SerializeToString())
        fields = {f.name: f for f in converter.message_class.DESCRIPTOR.fields}
        present = {name for name, f in fields.items() if f.has_presence}
        assert present == {"count", "mode", "flag", "ratio", "level"}

    def test_absent_text_types_take_the_default(self) -> None:
        class Model(BaseModel):
            ident: uuid.UUID = uuid.UUID(int=7)
            price: decimal.Decimal

        converter = converter_for(Model)
        only_price = converter.message_class(price="1.5").SerializeToString()  # type: ignore[call-arg]
        assert converter.decode(only_price) == Model(price=decimal.Decimal("1.5"))
        with pytest.raises(ValidationError, match="price"):
            converter.decode(b"")

    def test_an_unspecified_enum_is_not_given(self) -> None:
        class Model(BaseModel):
            color: Color = Color.GREEN
            required: Color

        with pytest.raises(ValidationError, match="required"):
            converter_for(Model).decode(b"")

        class Defaulted(BaseModel):
            color: Color = Color.GREEN
            level: Color | None = Color.RED

        back = converter_for(Defaulted).decode(b"")
        assert (back.color, back.level) == (Color.GREEN, None)

    def test_an_unknown_enum_number_is_a_validation_error(self) -> None:
        class Model(BaseModel):
            color: Color

        with pytest.raises(ValidationError, match="color"):
            converter_for(Model).decode(b"\x08\x63")  # field 1 = 99

    def test_any_keeps_none_apart_from_absent(self) -> None:
        class Model(BaseModel):
            value: Any = "default"

        converter = converter_for(Model)
        assert converter.decode(converter.encode(Model(value=None))).value is None
        assert converter.decode(b"").value == "default"


class TestModels:
    def test_aliases_do_not_change_field_names(self) -> None:
        class Model(BaseModel):
            model_config = ConfigDict(alias_generator=to_camel)
            user_name: str
            other: int = Field(validation_alias=AliasChoices("x", "y"))

        schema = ProtoSchema(package="aliases")
        schema.add_message(Model)
        assert [field.name for field in schema.file_proto.message_type[0].field] == [
            "user_name",
            "other",
        ]
        original = Model(userName="ada", x=3)
        assert_exact(original, round_trip(original))

    def test_strict_models_accept_what_protobuf_carries(self) -> None:
        class Model(BaseModel):
            model_config = ConfigDict(strict=True)
            ident: uuid.UUID
            color: Color
            price: decimal.Decimal
            day: dt.date

        original = Model(
            ident=uuid.uuid4(), color=Color.RED, price=decimal.Decimal("2.5"), day=dt.date.today()
        )
        assert_exact(original, round_trip(original))

    def test_use_enum_values_models_round_trip(self) -> None:
        class Model(BaseModel):
            model_config = ConfigDict(use_enum_values=True)
            color: Color
            colors: list[Color]

        original = Model(color=Color.GREEN, colors=[Color.RED])
        assert original.color == "green"
        assert_exact(original, round_trip(original))

    def test_validators_run_on_decode(self) -> None:
        class Model(BaseModel):
            count: Annotated[int, Field(gt=0)]

        converter = converter_for(Model)
        with pytest.raises(ValidationError, match="greater than 0"):
            converter.decode(b"\x08\x00")

    def test_generic_models_get_a_protobuf_name(self) -> None:
        from typing import Generic, TypeVar

        T = TypeVar("T")

        class Page(BaseModel, Generic[T]):
            items: list[T]

        schema = ProtoSchema(package="generic")
        schema.add_message(Page[Child])
        assert schema.full_name(Page[Child]) == "generic.Page_Child"
        original = Page[Child](items=[Child(name="a")])
        assert_exact(original, round_trip(original))

    def test_inherited_fields_come_first(self) -> None:
        class Base(BaseModel):
            a: int = 0

        class Derived(Base):
            b: str = ""

        original = Derived(a=1, b="x")
        assert_exact(original, round_trip(original))
        assert converter_for(Derived).encode(original) == b"\x08\x01\x12\x01x"

    def test_excluded_fields_are_not_sent(self) -> None:
        class Model(BaseModel):
            visible: int = 0
            secret: str = Field(default="", exclude=True)

        converter = converter_for(Model)
        assert [f.name for f in converter.message_class.DESCRIPTOR.fields] == ["visible"]
        assert converter.decode(converter.encode(Model(visible=1, secret="s"))).secret == ""

    def test_to_message_and_from_message(self) -> None:
        converter = converter_for(Child)
        message = converter.to_message(Child(name="a", kids=[Child(name="b")]))
        assert message.name == "a"  # type: ignore[attr-defined]
        assert message.kids[0].name == "b"  # type: ignore[attr-defined]
        assert converter.from_message(message) == Child(name="a", kids=[Child(name="b")])

    def test_encoding_a_dict_validates_it_first(self) -> None:
        converter = converter_for(Child)
        assert converter.decode(converter.encode({"name": "a"})) == Child(name="a")
        with pytest.raises(ValidationError):
            converter.encode({"name": 5})


class TestBadInput:
    @pytest.mark.parametrize(
        "data",
        [
            pytest.param(b"\xff\xff\xff\xff", id="garbage"),
            pytest.param(b"\x0a\x05ab", id="truncated"),
            pytest.param(b"\x0a\x02\xff\xfe", id="invalid utf-8"),
            pytest.param(b"\x00\x01", id="field number 0"),
            pytest.param(b"\x0b", id="group"),
        ],
    )
    def test_bytes_that_are_not_the_message_are_a_bad_request(self, data: bytes) -> None:
        with pytest.raises(BadRequest, match=r"not a valid roundtrip\.Child message"):
            converter_for(Child).decode(data)

    def test_a_field_sent_with_another_wire_type_is_a_bad_request(self) -> None:
        with pytest.raises(BadRequest, match=r"Child\.name \(field 1\) was sent as varint"):
            converter_for(Child).decode(b"\x08\x05")

    def test_a_wrong_wire_type_inside_a_nested_message_is_found(self) -> None:
        # kids[0].name as a 64-bit value
        data = b"\x12\x09\x09" + b"\x00" * 8
        with pytest.raises(BadRequest, match=r"Child\.name \(field 1\) was sent as 64-bit"):
            converter_for(Child).decode(data)

    def test_unknown_fields_from_a_newer_client_are_ignored(self) -> None:
        assert converter_for(Child).decode(b"\x0a\x01a\x78\x01") == Child(name="a")

    def test_too_deep_nesting_is_a_bad_request_not_a_crash(self) -> None:
        data = b""
        for _ in range(200):
            data = b"\x12" + _varint(len(data)) + data
        with pytest.raises(BadRequest):
            converter_for(Child).decode(data)

    def test_a_value_out_of_range_names_the_field(self) -> None:
        class Model(BaseModel):
            count: int

        with pytest.raises(PydanticSerializationError, match=r"Model\.count: cannot encode"):
            converter_for(Model).encode(Model(count=2**70))

    def test_a_value_of_the_wrong_type_names_the_field(self) -> None:
        class Model(BaseModel):
            when: dt.datetime
            color: Color

        converter = converter_for(Model)
        bad_time = Model.model_construct(when="yesterday", color=Color.RED)
        with pytest.raises(PydanticSerializationError, match=r"Model\.when: cannot encode"):
            converter.encode(bad_time)
        bad_color = Model.model_construct(when=dt.datetime.now(UTC), color="purple")
        with pytest.raises(PydanticSerializationError, match=r"Model\.color: cannot encode"):
            converter.encode(bad_color)

    def test_a_struct_holding_a_non_json_value_names_the_field(self) -> None:
        class Model(BaseModel):
            meta: dict[str, Any]

        with pytest.raises(PydanticSerializationError, match=r"Model\.meta"):
            converter_for(Model).encode(Model(meta={"when": dt.datetime.now(UTC)}))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def test_encoded_bytes_are_canonical_protobuf() -> None:
    """Bytes match what protobuf's own reflection API writes for the same values."""
    converter = converter_for(Child)
    ours = converter.encode(Child(name="a", kids=[Child(name="b")]))
    message = converter.message_class()
    message.name = "a"  # type: ignore[attr-defined]
    message.kids.add(name="b")  # type: ignore[attr-defined]
    assert ours == message.SerializeToString()
