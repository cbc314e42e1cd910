"""What travels with a call: ``Micro-*`` metadata, the deadline and the W3C trace context.

A server reads these from the request (HTTP headers or gRPC metadata) into a ``Context`` that
lives in a context variable for the duration of the handler; an onward call made inside the
handler sends the same metadata, the trace parent and whatever time is left.

On the wire: ``Micro-<Key>: value`` headers carry metadata (keys are case-insensitive and kept
lower-case without the prefix), ``Micro-Timeout`` carries the remaining time in milliseconds
and ``traceparent``/``tracestate`` are passed through unchanged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterable, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import TypeVar

from .errors import Timeout

__all__ = ["TIMEOUT_HEADER", "Context", "current_context", "request_context", "within_deadline"]

T = TypeVar("T")

TIMEOUT_HEADER = "micro-timeout"
_PREFIX = b"micro-"
_PREFIX_LEN = len(_PREFIX)
_TIMEOUT_KEY = TIMEOUT_HEADER[_PREFIX_LEN:]
_TRACE_HEADERS = frozenset((b"traceparent", b"tracestate"))
_FIRST_BYTES = frozenset((b"m", b"t"))

_current: ContextVar[Context | None] = ContextVar("asgi_micro_context", default=None)


def current_context() -> Context | None:
    """The context of the request being handled, if any."""
    return _current.get()


def request_context(headers: Iterable[tuple[bytes, bytes]]) -> tuple[Context, bool]:
    """The context a request runs in: the one in force (``MicroMiddleware`` set it, and
    enforces its deadline), else one read from ``headers``; and whether it is that new one,
    whose deadline the caller must enforce."""
    context = _current.get()
    if context is not None:
        return context, False
    return Context.from_headers(headers), True


@dataclass(slots=True)
class Context:
    """Metadata, deadline (``time.monotonic()`` seconds) and trace headers of one call."""

    metadata: dict[str, str] = field(default_factory=dict)
    deadline: float | None = None
    trace: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_headers(cls, headers: Iterable[tuple[bytes, bytes]]) -> Context:
        """Read ASGI headers (lower-case names); a malformed ``Micro-Timeout`` is ignored."""
        return cls.carried_by(headers) or cls()

    @classmethod
    def carried_by(cls, headers: Iterable[tuple[bytes, bytes]]) -> Context | None:
        """The context the headers carry, or ``None`` when they carry none (the common case,
        which costs one pass over the names and no allocation)."""
        context = None
        for name, value in headers:
            first = name[:1]
            if first not in _FIRST_BYTES:
                continue  # most headers: one comparison each
            if name.startswith(_PREFIX):
                if context is None:
                    context = cls()
                key = name[_PREFIX_LEN:].decode("latin-1")
                if key == _TIMEOUT_KEY:
                    context.deadline = _deadline_from_millis(value.decode("latin-1"))
                else:
                    context.metadata[key] = value.decode("latin-1")
            elif name in _TRACE_HEADERS:
                if context is None:
                    context = cls()
                context.trace[name.decode("latin-1")] = value.decode("latin-1")
        return context

    @classmethod
    def from_mapping(cls, headers: Mapping[str, str]) -> Context:
        """Read a mapping such as gRPC metadata or ``httpx.Headers``."""
        return cls.from_headers(
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in headers.items()
        )

    def remaining(self) -> float | None:
        """Seconds left before the deadline (may be negative), or ``None`` without one."""
        if self.deadline is None:
            return None
        return self.deadline - time.monotonic()

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def onward(
        self, *, timeout: float | None = None, metadata: Mapping[str, str] | None = None
    ) -> Context:
        """The context for a call made from this one: same trace, merged metadata, and the
        earlier of this deadline and ``timeout`` from now."""
        deadline = self.deadline
        if timeout is not None:
            own = time.monotonic() + timeout
            deadline = own if deadline is None else min(deadline, own)
        merged = self.metadata if not metadata else {**self.metadata, **_normalise(metadata)}
        return Context(dict(merged), deadline, dict(self.trace))

    def headers(self) -> list[tuple[str, str]]:
        """Headers for an outgoing HTTP call (names lower-case, as for gRPC metadata)."""
        out = [(f"micro-{key}", value) for key, value in self.metadata.items()]
        out.extend(self.trace.items())
        remaining = self.remaining()
        if remaining is not None:
            out.append((TIMEOUT_HEADER, str(max(1, int(remaining * 1000)))))
        return out

    def activate(self) -> Token[Context | None]:
        """Make this the current context; pass the token to ``Context.reset``."""
        return _current.set(self)

    @staticmethod
    def reset(token: Token[Context | None]) -> None:
        _current.reset(token)


async def within_deadline(context: Context, awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` with ``context`` current, raising ``errors.Timeout`` (408) when its
    deadline passes first; a ``TimeoutError`` the awaitable raises itself passes through."""
    token = context.activate()
    try:
        remaining = context.remaining()
        if remaining is None:
            return await awaitable
        if remaining <= 0:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            raise Timeout("deadline exceeded before the handler started")
        deadline = asyncio.timeout(remaining)
        try:
            async with deadline:
                return await awaitable
        except TimeoutError:
            if deadline.expired():
                raise Timeout("deadline exceeded") from None
            raise
    finally:
        Context.reset(token)


def _deadline_from_millis(value: str) -> float | None:
    try:
        millis = float(value)
    except ValueError:
        return None
    if millis != millis or millis < 0:  # NaN or negative
        return None
    return time.monotonic() + millis / 1000


def _normalise(metadata: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for key, value in metadata.items():
        key = key.lower()
        if key.startswith("micro-"):
            key = key[_PREFIX_LEN:]
        out[key] = str(value)
    return out
