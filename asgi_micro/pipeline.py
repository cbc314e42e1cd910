"""One call pipeline for every protocol: decode, wrappers, dependencies, invoke, encode, account.

Every entry point (HTTP unary on the fast path and the FastAPI path, NDJSON and Server-Sent
Events, WebSocket, gRPC unary and streaming, and event subscribers) decodes its request into a
``Call`` and runs it through its service's ``Pipeline``: the server wrappers in the order they
were added, then the handler (its dependencies resolved, within the call's deadline). The entry
point encodes what comes back in its own protocol. Each entry point also brackets the call with
``begin()`` and ``end()``, so the service knows what is in flight on every protocol and a drain
waits for all of it.

A server wrapper is Go Micro's ``HandlerWrapper`` (gRPC's interceptor)::

    async def log_calls(call: Call, next: Next) -> Any:
        started = time.perf_counter()
        try:
            return await next(call)
        finally:
            logger.info("%s over %s took %.3fs", call.endpoint, call.protocol,
                        time.perf_counter() - started)

    service.wrap(log_calls)

It sees every call of the service, with the endpoint's name (``Greeter.Hello``, ``GET
/items/{item_id}`` for a plain route, the topic for an event), the protocol, the context
(metadata, deadline, trace) and the decoded request, or for a stream of requests an async
iterator over them, which it may replace with its own. ``await next(call)`` returns the result:
the handler's reply; for a stream of replies ``None`` once the last one was written (each goes
through ``call.write``, which a wrapper may replace to see them); for a plain HTTP route
``None`` once the route has answered. It raises what the handler raised, or a ``MicroError`` for
what the route answered with a 4xx or 5xx status. A wrapper short-circuits by raising a
``MicroError`` (``Forbidden``, ``TooManyRequests``...), which the caller gets in the same shape
on every protocol, or by returning a reply of its own without calling ``next``.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from .context import Context

if TYPE_CHECKING:
    from .rpc import RPC

__all__ = [
    "BaseCall",
    "Call",
    "Gate",
    "Host",
    "Next",
    "Observer",
    "Pipeline",
    "Stats",
    "Wrapper",
    "check_wrapper",
    "compose",
    "standalone",
]

C = TypeVar("C")
CallProtocol = Literal["http", "websocket", "grpc", "event", "local"]


class BaseCall:
    """What a call is on either side of the wire: the endpoint, how it travels, its context
    (metadata, deadline, trace), the request, and ``state`` for wrappers to pass things on."""

    __slots__ = ("_state", "context", "endpoint", "kind", "protocol", "request")

    def __init__(
        self, endpoint: str, protocol: str, context: Context, request: Any, kind: str
    ) -> None:
        self.endpoint = endpoint
        self.protocol = protocol
        self.context = context
        self.request = request
        self.kind = kind
        self._state: dict[str, Any] | None = None

    @property
    def state(self) -> dict[str, Any]:
        """A dict for wrappers to leave things for later wrappers and the handler (made on
        first use: most calls never need one)."""
        if self._state is None:
            self._state = {}
        return self._state

    @property
    def metadata(self) -> dict[str, str]:
        """The call's metadata (``Micro-*`` headers, gRPC ``micro-*`` metadata)."""
        return self.context.metadata

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.endpoint!r}, protocol={self.protocol!r}, "
            f"kind={self.kind!r})"
        )


class Call(BaseCall):
    """One incoming call, as wrappers and the handler's dependencies see it.

    ``endpoint`` is the name the registry lists; ``protocol`` is ``http``, ``websocket``,
    ``grpc``, ``event`` or ``local`` (a call from the same process, ``asgi_micro.local``);
    ``kind`` is ``unary``, ``server`` (a stream of replies), ``client``
    (a stream of requests) or ``bidi``; ``content_type`` is the request's media type on the
    wire (``application/json``, ``application/protobuf``, ``application/grpc``...).
    ``request`` is the decoded request (``None`` for a plain HTTP route, whose parameters
    FastAPI reads later) or an async iterator of them; ``write`` sends one reply of a stream.
    ``state`` is a dict for wrappers to leave things for later wrappers and the handler.
    """

    __slots__ = ("content_type", "host", "rpc", "write")

    def __init__(
        self,
        endpoint: str,
        protocol: CallProtocol,
        context: Context,
        *,
        host: Host | None,
        request: Any = None,
        kind: str = "unary",
        content_type: str = "",
        rpc: RPC | None = None,
        write: Callable[[Any], Awaitable[None]] | None = None,
    ) -> None:
        # BaseCall's fields set here rather than through super(): a call on every request.
        self.endpoint = endpoint
        self.protocol = protocol
        self.context = context
        self.request = request
        self.kind = kind
        self._state = None
        self.host = host
        self.content_type = content_type
        self.rpc = rpc
        self.write = write or _no_stream


Direct = Callable[[Any, Context], Awaitable[Any]]
"""An RPC's fast path (``Pipeline.direct``): ``await direct(request, context)``."""
Next = Callable[[Call], Awaitable[Any]]
"""The rest of the pipeline, as a wrapper calls it: ``await next(call)``."""
Wrapper = Callable[[Call, Next], Awaitable[Any]]
"""A server wrapper: ``async def wrapper(call: Call, next: Next) -> Any``."""
Observer = Callable[["Call | None", str, str, float, "BaseException | None"], None]
"""Told of every call once it ended: ``observer(call, protocol, endpoint, seconds, error)``;
``call`` is ``None`` on a fast path that built none, ``error`` what the call raised."""


class Gate(abc.ABC):
    """A server wrapper that only decides whether a call goes on, from its context (metadata,
    bearer token), its endpoint and its protocol; it may leave what it found in the context
    (auth's ``context.account``). Added with ``wrap`` like any wrapper; unlike one, it lets
    the entry points keep their fast path: where every wrapper of an endpoint is a gate, they
    run ``admit`` and then the handler, with no ``Call`` built and no chain run."""

    @abc.abstractmethod
    def admit(self, context: Context, endpoint: str, protocol: str) -> Awaitable[None] | None:
        """Let the call on (return ``None``) or refuse it (raise a ``MicroError``); for the
        rare call that takes I/O to decide, return an awaitable that does either."""

    async def __call__(self, call: Call, next: Next) -> Any:
        pending = self.admit(call.context, call.endpoint, call.protocol)
        if pending is not None:
            await pending
        return await next(call)


class Host(Protocol):
    """What serving code needs of the service it serves: its name, which errors carry as
    their ``id``, its pipeline, the largest request message it takes (``limits``), and whether
    it takes its callers' ``Micro-*`` metadata (``trust_callers``). Handlers' dependencies get
    the host as it is."""

    @property
    def name(self) -> str: ...

    @property
    def pipeline(self) -> Pipeline: ...

    @property
    def max_message_size(self) -> int: ...

    @property
    def trust_callers(self) -> bool: ...


@dataclass(slots=True)
class Stats:
    """Calls on every protocol: begun, failed with a server error, and in flight now."""

    started_at: float = 0.0
    requests: int = 0
    errors: int = 0
    in_flight: int = 0


class Pipeline:
    """The wrappers of one service, and what it has in flight.

    ``handler(rpc)`` is the pipeline of one RPC endpoint, composed once: the wrappers, then a
    handler that resolves the endpoint's dependencies and calls it (a stream of replies goes
    through ``call.write``). ``run(call, handler)`` runs any other handler (a plain route, an
    event) through the wrappers. ``begin()`` and ``end()`` bracket every call an entry point
    takes; ``wait_idle`` waits for the last one to end.
    """

    def __init__(self, host: Host | None = None) -> None:
        self.host = host
        self.wrappers: tuple[Wrapper, ...] = ()
        # The wrappers when every one is a Gate (none at all included), else None: what the
        # fast paths may run in place of the chain.
        self.gates: tuple[Gate, ...] | None = ()
        self.observers: tuple[Observer, ...] = ()
        self.stats = Stats()
        self.draining = False
        self.frozen = False  # set once the service serves: wrappers are in place by then
        self._handlers: dict[RPC, Next] = {}
        self._direct: dict[tuple[RPC, str], Direct | None] = {}
        self._idle: asyncio.Event | None = None

    def wrap(self, wrapper: Wrapper) -> Wrapper:
        """Add a server wrapper; it runs after those added before it (the first added is
        the outermost). Usable as a decorator. Wrappers are added before the service starts
        serving, so that no call ever sees a half-built chain."""
        if self.frozen:
            raise RuntimeError("add wrappers before the service starts serving")
        check_wrapper(wrapper)
        self.wrappers = (*self.wrappers, wrapper)
        gates = tuple(wrapper for wrapper in self.wrappers if isinstance(wrapper, Gate))
        self.gates = gates if len(gates) == len(self.wrappers) else None
        self._handlers.clear()
        self._direct.clear()
        return wrapper

    def observe(self, observer: Observer) -> Observer:
        """Add an observer: told of every call once it ended, outside every wrapper (what a
        wrapper refuses is observed too). Unlike a wrapper it leaves the fast paths in place,
        which is what makes measuring every call cheap (``asgi_micro.metrics``)."""
        if self.frozen:
            raise RuntimeError("add observers before the service starts serving")
        self.observers = (*self.observers, observer)
        self._handlers.clear()
        self._direct.clear()
        return observer

    @property
    def wrapped(self) -> bool:
        """Whether anything runs around the handlers: a wrapper or an observer."""
        return bool(self.wrappers or self.observers)

    @property
    def gated(self) -> bool:
        """Whether a ``Gate`` is among the wrappers: then every call's context is read."""
        return any(isinstance(wrapper, Gate) for wrapper in self.wrappers)

    # -- running calls ------------------------------------------------------------------------

    def handler(self, rpc: RPC) -> Next:
        """The pipeline of ``rpc``: its wrappers, then the RPC itself."""
        found = self._handlers.get(rpc)
        if found is None:
            found = self._handlers[rpc] = self.chain(_invoker(rpc, self.host))
        return found

    def direct(self, rpc: RPC, protocol: str = "http") -> Direct | None:
        """``rpc``'s fast path over ``protocol``, when it needs nothing but its request (no
        dependencies, the request its one parameter) and every wrapper is a ``Gate``: then
        ``direct(request, context)`` is all a call takes, and an entry point may skip building
        the ``Call``. The gates admit it first; the observers are told of it all the same.
        ``None`` otherwise."""
        if rpc.server_streaming or not rpc.plain:
            return None
        key = (rpc, protocol)
        try:
            return self._direct[key]
        except KeyError:
            pass
        gates = self.gates
        found = self._direct[key] = (
            None
            if gates is None
            else _direct(rpc.handler, gates, self.observers, protocol, rpc.name)
        )
        return found

    def chain(self, handler: Next) -> Next:
        """``handler`` behind the observers and the wrappers."""
        if not self.observers:
            return compose(self.wrappers, handler)
        return compose((self._observing, *self.wrappers), handler)

    async def run(self, call: Call, handler: Next) -> Any:
        """Run ``call`` through the observers and the wrappers, then ``handler``."""
        if not self.wrapped:
            return await handler(call)
        return await self.chain(handler)(call)

    async def _observing(self, call: Call, next: Next) -> Any:
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            return await next(call)
        except BaseException as exc:
            error = exc
            raise
        finally:
            elapsed = time.perf_counter() - started
            for observer in self.observers:
                observer(call, call.protocol, call.endpoint, elapsed, error)

    # -- accounting ---------------------------------------------------------------------------

    def begin(self) -> None:
        """A call came in, on any protocol."""
        stats = self.stats
        stats.requests += 1
        stats.in_flight += 1

    def end(self, *, failed: bool = False) -> None:
        """The call ended; ``failed`` when with a server error (5xx)."""
        stats = self.stats
        stats.in_flight -= 1
        if failed:
            stats.errors += 1
        if stats.in_flight == 0 and self._idle is not None:
            self._idle.set()

    def ended(self) -> None:
        """For an entry point that counts ``stats`` itself on its hottest path: a call ended
        (and was taken off ``in_flight``) while the service drains. ``wait_idle`` runs only
        while draining, so only then is there anyone to tell."""
        if self.stats.in_flight == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for the calls in flight to end; how many still run."""
        if self.stats.in_flight > 0:
            self._idle = asyncio.Event()
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._idle.wait(), timeout)
            finally:
                self._idle = None
        return self.stats.in_flight

    def reset(self) -> None:
        """Serving again, after a stop."""
        self.draining = False
        self.stats.started_at = time.time()


def compose(
    wrappers: Sequence[Callable[[C, Callable[[C], Awaitable[Any]]], Awaitable[Any]]],
    handler: Callable[[C], Awaitable[Any]],
) -> Callable[[C], Awaitable[Any]]:
    """``handler`` behind ``wrappers``, the first the outermost; for server and client
    wrappers alike."""
    for wrapper in reversed(wrappers):
        handler = _link(wrapper, handler)
    return handler


def _link(
    wrapper: Callable[[C, Callable[[C], Awaitable[Any]]], Awaitable[Any]],
    inner: Callable[[C], Awaitable[Any]],
) -> Callable[[C], Awaitable[Any]]:
    # A plain function handing back the wrapper's awaitable: each link of the chain costs a
    # call, not a coroutine of its own.
    def step(call: C) -> Awaitable[Any]:
        return wrapper(call, inner)

    return step


def _direct(
    handler: Callable[[Any], Awaitable[Any]],
    gates: Sequence[Gate],
    observers: Sequence[Observer],
    protocol: str,
    endpoint: str,
) -> Direct:
    """``handler`` on a fast path: behind ``gates``, with ``observers`` told of each call."""
    if gates:
        inner = _gated(handler, gates, protocol, endpoint)
    else:

        def inner(request: Any, context: Context) -> Awaitable[Any]:
            return handler(request)

    if not observers:
        return inner
    call = inner if gates else None

    async def observed(request: Any, context: Context) -> Any:
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            if call is None:
                return await handler(request)
            return await call(request, context)
        except BaseException as exc:
            error = exc
            raise
        finally:
            elapsed = time.perf_counter() - started
            for observer in observers:
                observer(None, protocol, endpoint, elapsed, error)

    return observed


def _gated(
    handler: Callable[[Any], Awaitable[Any]], gates: Sequence[Gate], protocol: str, endpoint: str
) -> Direct:
    if len(gates) == 1:
        admit = gates[0].admit

        async def gated(request: Any, context: Context) -> Any:
            pending = admit(context, endpoint, protocol)
            if pending is not None:
                await pending
            return await handler(request)

        return gated

    async def through_gates(request: Any, context: Context) -> Any:
        for gate in gates:
            pending = gate.admit(context, endpoint, protocol)
            if pending is not None:
                await pending
        return await handler(request)

    return through_gates


def check_wrapper(wrapper: Any) -> None:
    """A wrapper is an async callable taking the call and the rest of the pipeline."""
    if not callable(wrapper):
        raise TypeError(f"a wrapper is an async callable (call, next), got {wrapper!r}")
    if not (
        inspect.iscoroutinefunction(wrapper)
        or inspect.iscoroutinefunction(getattr(wrapper, "__call__", None))  # noqa: B004
    ):
        raise TypeError(f"a wrapper must be async: async def {_name(wrapper)}(call, next)")


def _invoker(rpc: RPC, host: Host | None) -> Next:
    """The innermost step of ``rpc``'s pipeline: dependencies, then the handler."""
    handler, param, resolvers = rpc.handler, rpc.request_param, rpc.resolvers
    if rpc.scoped:
        return _scoped_invoker(rpc, host)
    if rpc.server_streaming:

        async def stream(call: Call) -> None:
            replies = rpc.stream(rpc.arguments(call.request, host, call.context))
            try:
                write = call.write
                async for reply in replies:
                    await write(reply)
            finally:
                await replies.aclose()

        return stream
    if rpc.is_async and not resolvers and param is not None:
        # The common handler, ``async def hello(req: Model) -> Reply``: no dependencies to
        # resolve, so no arguments to gather.
        if rpc.plain:

            def direct(call: Call) -> Awaitable[Any]:
                return handler(call.request)  # type: ignore[no-any-return]

            return direct

        def by_name(call: Call) -> Awaitable[Any]:
            return handler(**{param: call.request})  # type: ignore[no-any-return]

        return by_name

    def invoke(call: Call) -> Awaitable[Any]:
        return rpc.invoke(rpc.arguments(call.request, host, call.context))

    return invoke


def _scoped_invoker(rpc: RPC, host: Host | None) -> Next:
    """The innermost step of an RPC with dependencies that live for the call: they are
    entered before the handler and exited once it returned, or its stream ended."""
    if rpc.server_streaming:

        async def stream(call: Call) -> None:
            async with contextlib.AsyncExitStack() as stack:
                kwargs = rpc.arguments(call.request, host, call.context)
                replies = rpc.stream(await rpc.enter(stack, kwargs, host, call.context))
                try:
                    write = call.write
                    async for reply in replies:
                        await write(reply)
                finally:
                    await replies.aclose()

        return stream

    async def invoke(call: Call) -> Any:
        async with contextlib.AsyncExitStack() as stack:
            kwargs = rpc.arguments(call.request, host, call.context)
            return await rpc.invoke(await rpc.enter(stack, kwargs, host, call.context))

    return invoke


@functools.cache
def standalone(rpc: RPC) -> Next:
    """The pipeline of an RPC served with no service (a ``MicroRouter`` in an app that runs
    without one): no wrappers, no dependencies on a service."""
    return _invoker(rpc, None)


async def _no_stream(reply: Any) -> None:
    raise RuntimeError("this call takes one reply: return it from the handler")


def _name(value: Any) -> str:
    return str(getattr(value, "__name__", type(value).__name__))
