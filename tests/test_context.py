from __future__ import annotations

import asyncio
import time

import pytest

from asgi_micro import errors
from asgi_micro.context import Context, current_context, within_deadline


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


@pytest.mark.parametrize("value", [b"soon", b"-5", b"nan"])
def test_malformed_timeouts_are_ignored(value: bytes) -> None:
    assert Context.from_headers([(b"micro-timeout", value)]).deadline is None


def test_onward_keeps_the_earlier_deadline_and_merges_metadata() -> None:
    context = Context(
        metadata={"tenant": "acme"}, deadline=time.monotonic() + 1.0, trace={"traceparent": "t"}
    )
    longer = context.onward(timeout=10, metadata={"Micro-User": "ada"})
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
