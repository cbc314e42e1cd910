from __future__ import annotations

import asyncio
import time

import pytest

from asgi_micro import errors
from asgi_micro.context import (
    PROPAGATE_ALL,
    Context,
    current_context,
    read_headers,
    read_metadata,
    within_deadline,
)


def test_reads_metadata_deadline_and_trace() -> None:
    before = time.monotonic()
    context = Context.from_headers(
        [
            (b"micro-tenant", b"acme"),
            (b"micro-timeout", b"1500"),
            (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            (b"content-type", b"application/json"),
        ]
    )
    assert context.metadata == {"tenant": "acme"}
    assert context.trace == {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    }
    assert context.deadline is not None
    assert 1.4 < context.deadline - before < 1.6


@pytest.mark.parametrize("value", [b"soon", b"-5", b"nan", b"inf", b""])
def test_a_malformed_timeout_is_a_bad_request(value: bytes) -> None:
    with pytest.raises(errors.BadRequest, match="Micro-Timeout"):
        Context.from_headers([(b"micro-timeout", value)])


def test_headers_without_context_cost_no_context() -> None:
    assert read_headers([(b"host", b"x"), (b"content-type", b"application/json")]) is None


def test_grpc_metadata_is_read_by_the_same_reader() -> None:
    """The same names over gRPC: text values, binary ``-bin`` keys and ``micro-timeout``
    skipped (gRPC's own ``grpc-timeout`` carries the deadline)."""
    context = read_metadata(
        [
            ("micro-tenant", "acme"),
            ("micro-timeout", "5"),
            ("micro-blob-bin", b"\x00\x01"),
            ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            ("user-agent", "grpc-python"),
        ]
    )
    assert context is not None
    assert context.metadata == {"tenant": "acme"}
    assert context.deadline is None
    assert set(context.trace) == {"traceparent"}
    assert read_metadata([("user-agent", "grpc-python")]) is None


def test_onward_propagates_only_the_allow_list_and_never_identity() -> None:
    context = Context(metadata={"tenant": "acme", "secret": "s", "from-service": "mallory"})
    assert context.onward().metadata == {}
    assert context.onward(propagate=("tenant", "absent")).metadata == {"tenant": "acme"}
    assert context.onward(propagate=("from-service",)).metadata == {}
    assert context.onward(propagate=(PROPAGATE_ALL,)).metadata == {"tenant": "acme", "secret": "s"}
    # What the caller adds itself always goes.
    assert context.onward(metadata={"from-service": "b"}).metadata == {"from-service": "b"}


def test_onward_keeps_the_earlier_deadline_and_merges_metadata() -> None:
    context = Context(
        metadata={"tenant": "acme"}, deadline=time.monotonic() + 1.0, trace={"traceparent": "t"}
    )
    longer = context.onward(timeout=10, metadata={"Micro-User": "ada"}, propagate=("tenant",))
    assert longer.deadline == context.deadline
    assert longer.metadata == {"tenant": "acme", "user": "ada"}
    shorter = context.onward(timeout=0.1)
    assert shorter.deadline is not None
    assert context.deadline is not None
    assert shorter.deadline < context.deadline
    headers = dict(longer.headers())
    assert headers["micro-tenant"] == "acme"
    assert headers["traceparent"] == "t"
    assert 900 <= int(headers["micro-timeout"]) <= 1000


def test_from_mapping() -> None:
    context = Context.from_mapping({"Micro-Tenant": "acme", "grpc-timeout": "1S"})
    assert context.metadata == {"tenant": "acme"}


async def test_within_deadline() -> None:
    context = Context(deadline=time.monotonic() + 0.05)

    async def slow() -> None:
        assert current_context() is context
        await asyncio.sleep(1)

    with pytest.raises(errors.Timeout):
        await within_deadline(context, slow())
    assert current_context() is None

    async def own_timeout() -> None:
        raise TimeoutError("the handler's own")

    with pytest.raises(TimeoutError, match="the handler's own"):
        await within_deadline(Context(deadline=time.monotonic() + 5), own_timeout())

    expired = Context(deadline=time.monotonic() - 1)
    with pytest.raises(errors.Timeout, match="before the handler started"):
        await within_deadline(expired, slow())
