"""RPC handlers as grpc.aio method handlers: the same ``RPC`` that HTTP serves.

A method handler takes the raw request bytes (no ``request_deserializer``, which would turn bad
input into ``UNKNOWN``) and returns the raw reply bytes, converting with the service's
``ProtoSchema`` converters bound once per method. The call's ``Context`` (``micro-*`` metadata,
trace headers, the ``grpc-timeout`` deadline) is current while the handler runs; it reads the
metadata only when something asks for it. Errors set the status code, the detail and the error
itself in the trailing metadata (``status.ERROR_KEY``); anything unexpected is ``INTERNAL`` with
nothing of its internals, and goes to the log.

Every microsecond of Python per call shows: grpc.aio spends ~250 us of CPU on a call, and the
work a handler adds costs several times its in-process time end to end (the event loop and
grpc's completion-queue thread then contend for the GIL for longer).
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from pydantic import ValidationError

from ..context import Context, within_deadline
from ..errors import InternalServerError, MicroError
from ..protobuf import MessageConverter
from ..responses import error_from_validation
from ..rpc import RPC
from .status import error_metadata, status_for

if TYPE_CHECKING:
    from ..service import Service

__all__ = ["CallContext", "method_handler"]

logger = logging.getLogger("asgi_micro")

_PREFIX = "micro-"
_PREFIX_LEN = len(_PREFIX)
_TIMEOUT_KEY = "timeout"
_TRACE_KEYS = frozenset(("traceparent", "tracestate"))
_FIRST_CHARACTERS = frozenset("mt")
# The slots of Context's fields, which CallContext fills on first use.
_METADATA = Context.__dict__["metadata"]
_TRACE = Context.__dict__["trace"]

Handler = Callable[[Any, Any], Awaitable[Any]]


class CallContext(Context):
    """The ``Context`` of a gRPC call: ``micro-*`` metadata, ``traceparent``/``tracestate``
    and the ``grpc-timeout`` deadline. The metadata is read when first asked for: most
    handlers never ask (and make no onward call), and reading it costs more than the rest of
    asgi-micro's work on a call."""

    __slots__ = ("_call",)

    def __init__(self, call: Any, remaining: float | None) -> None:
        self._call = call
        self.deadline = None if remaining is None else time.monotonic() + remaining

    @property
    def metadata(self) -> dict[str, str]:
        self._read()
        metadata: dict[str, str] = _METADATA.__get__(self)
        return metadata

    @metadata.setter
    def metadata(self, value: dict[str, str]) -> None:
        self._read()
        _METADATA.__set__(self, value)

    @property
    def trace(self) -> dict[str, str]:
        self._read()
        trace: dict[str, str] = _TRACE.__get__(self)
        return trace

    @trace.setter
    def trace(self, value: dict[str, str]) -> None:
        self._read()
        _TRACE.__set__(self, value)

    def _read(self) -> None:
        call, self._call = self._call, None
        if call is None:
            return
        metadata: dict[str, str] = {}
        trace: dict[str, str] = {}
        for key, value in call.invocation_metadata():
            if key[:1] not in _FIRST_CHARACTERS:
                continue
            if key.startswith(_PREFIX):
                name = key[_PREFIX_LEN:]
                # grpc-timeout carries the deadline; binary values are no text metadata.
                if name != _TIMEOUT_KEY and not name.endswith("-bin"):
                    metadata[name] = value
            elif key in _TRACE_KEYS:
                trace[key] = value
        _METADATA.__set__(self, metadata)
        _TRACE.__set__(self, trace)


class _Method:
    """What every call of one method needs, bound once."""

    __slots__ = ("decode", "encode", "error_id", "rpc", "service")

    def __init__(
        self,
        rpc: RPC,
        service: Service,
        request: MessageConverter,
        response: MessageConverter,
    ) -> None:
        self.rpc = rpc
        self.service = service
        self.decode = request.decode
        self.encode = response.encode
        self.error_id = service.name

    def context(self, call: Any) -> CallContext:
        """The call's context, current from now to the end of the call (gRPC runs each call
        in a task of its own, whose context variables end with it)."""
        context = CallContext(call, call.time_remaining())
        context.activate()
        return context

    def arguments(self, request: Any, context: Context) -> dict[str, Any]:
        rpc = self.rpc
        if rpc.resolvers:
            return rpc.arguments(request, self.service, context)
        if rpc.request_param is None:
            return {}
        return {rpc.request_param: request}

    def requests(self, incoming: AsyncIterator[bytes]) -> AsyncGenerator[Any, None]:
        decode, error_id = self.decode, self.error_id

        async def requests() -> AsyncGenerator[Any, None]:
            async for data in incoming:
                try:
                    yield decode(data)
                except ValidationError as exc:
                    raise error_from_validation(exc, id=error_id) from None

        return requests()

    def fail(self, call: Any, error: MicroError) -> None:
        """End the call with ``error`` once the handler returns."""
        error.id = error.id or self.error_id
        call.set_code(status_for(error))
        call.set_details(error.detail)
        call.set_trailing_metadata(error_metadata(error))
        if error.code >= 500:
            self.service.stats.errors += 1

    def crash(self, call: Any) -> None:
        logger.exception("%s failed", self.rpc.name)
        self.fail(call, InternalServerError())

    def bad_request(self, call: Any, error: ValidationError) -> None:
        self.fail(call, error_from_validation(error, id=self.error_id))

    def finished(self) -> None:
        service = self.service
        service.stats.in_flight -= 1
        if service.draining:
            service.request_finished()


def method_handler(
    rpc: RPC, service: Service, request: MessageConverter, response: MessageConverter
) -> grpc.RpcMethodHandler:
    """The grpc.aio method handler serving ``rpc``."""
    method = _Method(rpc, service, request, response)
    if rpc.client_streaming:
        if rpc.server_streaming:
            return grpc.stream_stream_rpc_method_handler(_stream_stream(method))
        return grpc.stream_unary_rpc_method_handler(_stream_unary(method))
    if rpc.server_streaming:
        return grpc.unary_stream_rpc_method_handler(_unary_stream(method))
    return grpc.unary_unary_rpc_method_handler(_unary_unary(method))


def _unary_unary(method: _Method) -> Handler:
    rpc, service = method.rpc, method.service
    stats = service.stats
    decode, encode, invoke = method.decode, method.encode, rpc.invoke
    # The common handler, ``async def hello(req: Model) -> Reply``, is called as it is. This
    # is the hot path: written out rather than through _Method's helpers.
    direct = rpc.handler if rpc.is_async and _takes_request_only(rpc) else None

    async def unary_unary(data: bytes, call: Any) -> bytes | None:
        stats.requests += 1
        stats.in_flight += 1
        try:
            try:
                request = decode(data)
            except ValidationError as exc:
                method.bad_request(call, exc)
                return None
            context = CallContext(call, call.time_remaining())
            context.activate()  # until the call's task ends
            if context.deadline is None:
                if direct is not None:
                    return encode(await direct(request))
                result = await invoke(method.arguments(request, context))
            else:
                result = await within_deadline(context, invoke(method.arguments(request, context)))
            return encode(result)
        except MicroError as exc:
            method.fail(call, exc)
        except Exception:
            method.crash(call)
        finally:
            stats.in_flight -= 1
            if service.draining:
                service.request_finished()
        return None

    return unary_unary


def _unary_stream(method: _Method) -> Handler:
    stats = method.service.stats
    decode = method.decode

    async def unary_stream(data: bytes, call: Any) -> None:
        stats.requests += 1
        stats.in_flight += 1
        try:
            try:
                request = decode(data)
            except ValidationError as exc:
                method.bad_request(call, exc)
                return
            context = method.context(call)
            await _replies(method, call, method.arguments(request, context), context)
        except MicroError as exc:
            method.fail(call, exc)
        except Exception:
            method.crash(call)
        finally:
            method.finished()

    return unary_stream


def _stream_unary(method: _Method) -> Handler:
    stats = method.service.stats
    encode, invoke = method.encode, method.rpc.invoke

    async def stream_unary(incoming: AsyncIterator[bytes], call: Any) -> bytes | None:
        stats.requests += 1
        stats.in_flight += 1
        requests = method.requests(incoming)
        try:
            context = method.context(call)
            kwargs = method.arguments(requests, context)
            if context.deadline is None:
                result = await invoke(kwargs)
            else:
                result = await within_deadline(context, invoke(kwargs))
            return encode(result)
        except MicroError as exc:
            method.fail(call, exc)
        except Exception:
            method.crash(call)
        finally:
            await requests.aclose()
            method.finished()
        return None

    return stream_unary


def _stream_stream(method: _Method) -> Handler:
    stats = method.service.stats

    async def stream_stream(incoming: AsyncIterator[bytes], call: Any) -> None:
        stats.requests += 1
        stats.in_flight += 1
        requests = method.requests(incoming)
        try:
            context = method.context(call)
            await _replies(method, call, method.arguments(requests, context), context)
        except MicroError as exc:
            method.fail(call, exc)
        except Exception:
            method.crash(call)
        finally:
            await requests.aclose()
            method.finished()

    return stream_stream


async def _replies(method: _Method, call: Any, kwargs: dict[str, Any], context: Context) -> None:
    """Write a streaming handler's replies; its generator is closed however the call ends, so
    that its ``finally`` blocks run when the client cancels."""
    encode = method.encode

    async def pump() -> None:
        stream = method.rpc.stream(kwargs)
        try:
            async for item in stream:
                await call.write(encode(item))
        finally:
            await stream.aclose()

    if context.deadline is None:
        await pump()
    else:
        await within_deadline(context, pump())


def _takes_request_only(rpc: RPC) -> bool:
    """Whether the handler's one parameter is the request, which it may take by position."""
    if rpc.resolvers or rpc.request_param is None:
        return False
    parameters = list(inspect.signature(rpc.handler).parameters.values())
    return len(parameters) == 1 and parameters[0].kind in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    )
