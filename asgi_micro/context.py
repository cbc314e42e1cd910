"""What travels with a call: ``Micro-*`` metadata, the deadline and the W3C trace context.

A server reads these from the request, HTTP headers or gRPC metadata alike (one reader,
``read_headers`` and ``read_metadata``), into a ``Context`` that is current for the duration of
the call; a call made inside the handler sends the trace parent, whatever time is left and the
metadata the service's propagation allow-list names.

On the wire: ``Micro-<Key>: value`` headers (gRPC metadata ``micro-<key>``) carry metadata,
whose keys are case-insensitive and kept lower-case without the prefix; ``Micro-Timeout``
carries the time left in milliseconds over HTTP (gRPC has its own ``grpc-timeout``);
``traceparent`` and ``tracestate`` are passed through unchanged.

Propagation is explicit. An onward call carries the trace and the deadline always, metadata
only under the keys its client's allow-list names (``Service(propagate=["tenant"])``, or
``"*"`` for every key), and never the keys that say who is calling (``IDENTITY_KEYS``): each
hop names itself, so an incoming header cannot set the caller's identity on the next one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Collection, Mapping, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass, field, replace
from typing import Any, AnyStr, Generic, TypeVar

from .deadlines import Deadlines
from .errors import BadRequest, Timeout

__all__ = [
    "IDENTITY_KEYS",
    "PROPAGATE_ALL",
    "TIMEOUT_HEADER",
    "Context",
    "current_context",
    "read_headers",
    "read_metadata",
    "within_deadline",
    "without_metadata",
]

T = TypeVar("T")

TIMEOUT_HEADER = "micro-timeout"
IDENTITY_KEYS = frozenset({"from-service"})
"""Metadata that names the caller: set by each hop's own client, never propagated."""
PROPAGATE_ALL = "*"
"""In a propagation allow-list: every metadata key but the ``IDENTITY_KEYS``."""

_current: ContextVar[Context | None] = ContextVar("asgi_micro_context", default=None)


def current_context() -> Context | None:
    """The context of the call being handled, if any."""
    return _current.get()


@dataclass(slots=True)
class Context:
    """Metadata, deadline (``time.monotonic()`` seconds) and trace headers of one call."""

    metadata: dict[str, str] = field(default_factory=dict)
    deadline: float | None = None
    trace: dict[str, str] = field(default_factory=dict)
    authorization: str | None = None
    """The ``Authorization`` header (gRPC ``authorization`` metadata) as the caller sent it:
    read by auth, never passed on (an onward call carries its own service's token)."""
    account: Any = None
    """The caller's ``asgi_micro.auth.Account`` once auth verified its token, else ``None``."""

    @classmethod
    def from_headers(cls, headers: Sequence[tuple[bytes, bytes]]) -> Context:
        """The context ASGI headers carry (an empty one when they carry none)."""
        return read_headers(headers) or cls()

    @classmethod
    def from_mapping(cls, headers: Mapping[str, str]) -> Context:
        """The context a mapping of names to values carries (``httpx.Headers``, a dict)."""
        return read_metadata([(name.lower(), value) for name, value in headers.items()]) or cls()

    def remaining(self) -> float | None:
        """Seconds left before the deadline (may be negative), or ``None`` without one."""
        if self.deadline is None:
            return None
        return self.deadline - time.monotonic()

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def onward(
        self,
        *,
        timeout: float | None = None,
        metadata: Mapping[str, str] | None = None,
        propagate: Collection[str] = (),
    ) -> Context:
        """The context of a call made from this one: the same trace; the earlier of this
        deadline and ``timeout`` from now; of this call's metadata the keys ``propagate``
        names (``PROPAGATE_ALL`` for all), identity keys never; then ``metadata``."""
        deadline = self.deadline
        if timeout is not None:
            own = time.monotonic() + timeout
            deadline = own if deadline is None else min(deadline, own)
        incoming = self.metadata
        if not propagate or not incoming:
            kept: dict[str, str] = {}
        elif PROPAGATE_ALL in propagate:
            kept = {key: value for key, value in incoming.items() if key not in IDENTITY_KEYS}
        else:
            kept = {
                key: incoming[key]
                for key in propagate
                if key in incoming and key not in IDENTITY_KEYS
            }
        if metadata:
            kept.update(_normalise(metadata))
        return Context(kept, deadline, dict(self.trace))

    def headers(self) -> list[tuple[str, str]]:
        """Headers for an outgoing HTTP call (names lower-case, as for gRPC metadata)."""
        out = [(f"micro-{key}", value) for key, value in self.metadata.items()]
        out.extend(self.trace.items())
        if self.authorization is not None:
            out.append(("authorization", self.authorization))
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


# -- the one reader -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Wire(Generic[AnyStr]):
    """How one protocol spells the names the reader looks for: bytes for ASGI headers, text
    for gRPC metadata."""

    prefix: AnyStr
    trace: frozenset[AnyStr]
    first: frozenset[AnyStr]  # first characters of every name wanted: most names stop there
    initials: frozenset[Any]  # the same as name[0] gives them (ints for bytes)
    credentials: AnyStr  # the name of the bearer token's header
    timeout: AnyStr  # the key, after the prefix, of the deadline in milliseconds
    deadline: bool  # whether that key carries the deadline (else the protocol's own does)
    binary_suffix: AnyStr | None  # keys whose values are bytes, not text


_HTTP = _Wire(
    prefix=b"micro-",
    trace=frozenset((b"traceparent", b"tracestate")),
    first=frozenset((b"m", b"t", b"a")),
    initials=frozenset(b"mta"),
    credentials=b"authorization",
    timeout=b"timeout",
    deadline=True,
    binary_suffix=None,
)
_GRPC = _Wire(
    prefix="micro-",
    trace=frozenset(("traceparent", "tracestate")),
    first=frozenset("mta"),
    initials=frozenset("mta"),
    credentials="authorization",
    timeout="timeout",
    deadline=False,  # grpc-timeout carries it
    binary_suffix="-bin",
)
_GRPC_UNTRUSTED = replace(_GRPC, first=frozenset("ta"), initials=frozenset("ta"))


def read_headers(
    headers: Sequence[tuple[bytes, bytes]], wire: _Wire[Any] = _HTTP
) -> Context | None:
    """The context ASGI headers (lower-case names) carry, or ``None`` when they carry none.
    That common case costs one look at the first character of each name and no allocation
    (every request pays for it). A malformed ``Micro-Timeout`` is a ``BadRequest``. (gRPC
    metadata goes through the same reader: ``read_metadata``.)"""
    first = wire.initials
    try:
        for name, _ in headers:
            if name[0] in first:
                return _read(headers, wire)
    except IndexError:  # an empty name, which no server sends: the careful way
        return _read(headers, wire)
    return None


def _read(headers: Sequence[tuple[Any, Any]], wire: _Wire[Any]) -> Context | None:
    context = None
    prefix, cut, first = wire.prefix, len(wire.prefix), wire.first
    for name, value in headers:
        if name[:1] not in first:
            continue
        if name.startswith(prefix):
            if context is None:
                context = Context()
            key = name[cut:]
            if key == wire.timeout:
                if wire.deadline:
                    context.deadline = _deadline(_text(value))
            elif wire.binary_suffix is None or not key.endswith(wire.binary_suffix):
                context.metadata[_text(key)] = _text(value)
        elif name in wire.trace:
            if context is None:
                context = Context()
            context.trace[_text(name)] = _text(value)
        elif name == wire.credentials:
            if context is None:
                context = Context()
            context.authorization = _text(value)
    return context


def without_metadata(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` without the ``Micro-*`` ones (metadata and deadline): what a service that
    does not trust its callers reads. The trace headers stay: they say nothing about who calls,
    and a trace that starts at the edge is still one trace."""
    return [(name, value) for name, value in headers if not name.startswith(b"micro-")]


def read_metadata(
    metadata: Sequence[tuple[str, str | bytes]], *, trusted: bool = True
) -> Context | None:
    """The context gRPC metadata (lower-case keys) carries, or ``None`` when it carries none;
    the deadline comes from the call itself. Not ``trusted``, the ``micro-*`` keys are left
    out: only the trace and the bearer token, which auth verifies, are read."""
    return read_headers(metadata, _GRPC if trusted else _GRPC_UNTRUSTED)  # type: ignore[arg-type]


def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode("latin-1")


def _deadline(millis_text: str) -> float:
    try:
        millis = float(millis_text)
    except ValueError:
        millis = -1.0
    if not millis >= 0 or millis == float("inf"):  # negative, NaN or infinite
        raise BadRequest(
            f"Micro-Timeout is the time left in milliseconds, >= 0; got {millis_text!r}"
        )
    return time.monotonic() + millis / 1000


def _normalise(metadata: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for key, value in metadata.items():
        key = key.lower()
        if key.startswith("micro-"):
            key = key[6:]
        out[key] = str(value)
    return out


# -- deadlines ----------------------------------------------------------------------------


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
        # What ``asyncio.timeout(remaining)`` does, on the loop's one timer for all calls.
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("within_deadline runs in a task")
        cancelling = task.cancelling()
        deadlines = Deadlines.of_running_loop()
        ticket = deadlines.start(deadlines.loop.time() + remaining, task)
        try:
            return await awaitable
        except asyncio.CancelledError:
            if deadlines.expired(ticket) and task.uncancel() <= cancelling:
                raise Timeout("deadline exceeded") from None
            raise
        finally:
            deadlines.finish(ticket)
    finally:
        Context.reset(token)
