"""Schemathesis hooks for the contract tests (``SCHEMATHESIS_HOOKS=tests.contract_hooks``): RPC
bodies in msgpack too, as the document offers them.

Protobuf bodies stay out: protobuf bytes do not say which message they hold, and data that
breaks the schema (a number where a string goes) has no protobuf encoding at all, so
schemathesis cannot build them; ``tests/test_openapi.py`` sends protobuf itself.
"""

from __future__ import annotations

from typing import Any

import msgpack
import schemathesis

MSGPACK = "application/msgpack"


@schemathesis.hook
def filter_case(context: schemathesis.HookContext, case: schemathesis.Case) -> bool:
    """Leave out what msgpack cannot carry (an integer beyond 64 bits, which JSON can)."""
    return case.media_type != MSGPACK or _packable(case.body)


def _packable(value: Any) -> bool:
    try:
        msgpack.packb(value)
    except (OverflowError, TypeError, ValueError):
        return False
    return True


@schemathesis.serializer(MSGPACK)
def to_msgpack(context: schemathesis.SerializationContext, value: Any) -> bytes:
    packed: bytes = msgpack.packb(value)
    return packed


@schemathesis.deserializer(MSGPACK)
def from_msgpack(
    context: schemathesis.DeserializationContext, response: schemathesis.Response
) -> Any:
    return msgpack.unpackb(response.content)
