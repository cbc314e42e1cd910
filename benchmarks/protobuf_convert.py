"""Per-call cost of protobuf conversion: our model converter against the generated ``_pb2`` class.

    python benchmarks/protobuf_convert.py [--rounds 8] [--calls 20000]

One call is what a gRPC echo does with a request: bytes -> message -> bytes.

- ``generated``: the class grpcio-tools generates from our rendered ``.proto`` (compiled here,
  into a temporary directory): ``FromString`` then ``SerializeToString``, what a hand-written
  servicer pays.
- ``converter``: ``MessageConverter.decode`` (parse + validate into the pydantic model) then
  ``encode`` (model -> message -> bytes), what a shared handler pays.

Two messages: ``small`` (the greeter's one-string request) and ``medium`` (an order with a
nested customer, five line items, a timestamp, an enum, a map and an optional field). Rounds
alternate the two sides in shuffled order; figures are medians over rounds, in microseconds per
call, with the ratio and the extra cost as a share of a grpc.aio echo's ~340 us of server CPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import enum
import importlib
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal
from importlib import resources
from pathlib import Path
from types import ModuleType

from grpc_tools import protoc
from pydantic import BaseModel

from asgi_micro.protobuf import ProtoMethod, ProtoSchema, render_proto

GRPC_ECHO_CPU_US = 340.0


class HelloRequest(BaseModel):
    name: str


class Status(enum.Enum):
    PENDING = "pending"
    SHIPPED = "shipped"


class Customer(BaseModel):
    id: int
    name: str
    email: str


class LineItem(BaseModel):
    sku: str
    quantity: int
    unit_price: float
    tags: list[str] = []


class Order(BaseModel):
    id: int
    customer: Customer
    items: list[LineItem]
    status: Status
    created_at: dt.datetime
    attributes: dict[str, str] = {}
    note: str | None = None
    total: Decimal


SMALL = HelloRequest(name="Ada Lovelace")
MEDIUM = Order(
    id=1234567,
    customer=Customer(id=42, name="Ada Lovelace", email="ada@example.com"),
    items=[
        LineItem(sku=f"SKU-{index:04d}", quantity=index + 1, unit_price=9.99, tags=["a", "b"])
        for index in range(5)
    ],
    status=Status.SHIPPED,
    created_at=dt.datetime(2024, 5, 17, 12, 30, tzinfo=dt.UTC),
    attributes={"channel": "web", "coupon": "SPRING"},
    note="leave at the door",
    total=Decimal("59.94"),
)


def compile_generated(schema: ProtoSchema, directory: Path) -> ModuleType:
    source = directory / schema.file_name
    source.write_text(render_proto(schema), encoding="utf-8")
    include = resources.files("grpc_tools") / "_proto"
    code = protoc.main(
        [
            "protoc",
            f"--proto_path={directory}",
            f"--proto_path={include}",
            f"--python_out={directory}",
            schema.file_name,
        ]
    )
    if code != 0:
        raise SystemExit("protoc failed")
    sys.path.insert(0, str(directory))
    return importlib.import_module(f"{schema.package}_pb2")


def time_calls(call: Callable[[], object], calls: int) -> float:
    """Microseconds per call over one batch."""
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()

    schema = ProtoSchema(package="bench_convert")
    schema.add_service(
        "Bench",
        [ProtoMethod("Echo", HelloRequest, HelloRequest), ProtoMethod("Order", Order, Order)],
    )
    with tempfile.TemporaryDirectory() as tmp:
        generated = compile_generated(schema, Path(tmp))

    sides: dict[tuple[str, str], Callable[[], object]] = {}
    for label, value, generated_class in (
        ("small", SMALL, generated.HelloRequest),
        ("medium", MEDIUM, generated.Order),
    ):
        converter = schema.converter(type(value))
        data = converter.encode(value)
        assert converter.decode(data) == value, "the converter must round trip"
        assert generated_class.FromString(data).SerializeToString() == data
        from_string, encode, decode = generated_class.FromString, converter.encode, converter.decode

        def baseline(
            data: bytes = data, from_string: Callable[[bytes], object] = from_string
        ) -> object:
            return from_string(data).SerializeToString()  # type: ignore[attr-defined]

        def candidate(
            data: bytes = data,
            decode: Callable[[bytes], object] = decode,
            encode: Callable[[object], bytes] = encode,
        ) -> object:
            return encode(decode(data))

        sides[(label, "generated")] = baseline
        sides[(label, "converter")] = candidate
        print(f"{label}: {len(data)} bytes on the wire")

    for call in sides.values():
        time_calls(call, args.calls // 10)
    results: dict[tuple[str, str], list[float]] = {key: [] for key in sides}
    for _ in range(args.rounds):
        order = list(sides)
        random.shuffle(order)
        for key in order:
            results[key].append(time_calls(sides[key], args.calls))

    print(f"\n{args.rounds} rounds x {args.calls} calls, medians (us per decode+encode call)")
    print(
        f"{'message':<8} {'generated':>10} {'converter':>10} {'ratio':>7} {'extra':>8} {'of echo':>8}"
    )
    for label in ("small", "medium"):
        base = statistics.median(results[(label, "generated")])
        ours = statistics.median(results[(label, "converter")])
        extra = ours - base
        print(
            f"{label:<8} {base:>10.2f} {ours:>10.2f} {ours / base:>6.1f}x {extra:>7.2f}  "
            f"{extra / GRPC_ECHO_CPU_US:>7.1%}"
        )


if __name__ == "__main__":
    main()
