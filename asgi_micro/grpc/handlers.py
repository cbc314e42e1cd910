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

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from pydantic import ValidationError

from ..context import Context, read_metadata, within_deadline
from ..errors import BadRequest, InternalServerError, MicroError
from ..pipeline import Call
from ..protobuf import MessageConverter
from ..rpc import RPC
from .status import error_metadata, status_for

if TYPE_CHECKING:
    from ..pipeline import Host

__all__ = ["CallContext", "UntrustedCallContext", "method_handler"]

logger = logging.getLogger(__name__)

# The slots of Context's fields, which CallContext fills on first use.
_METADATA = Context.__dict__["metadata"]
_TRACE = Context.__dict__["trace"]
_AUTHORIZATION = Context.__dict__["authorization"]


class CallContext(Context):
    """The ``Context`` of a gRPC call: ``micro-*`` metadata, ``traceparent``/``tracestate``
    and the ``grpc-timeout`` deadline. The metadata is read when first asked for: most
    handlers never ask (and make no onward call), and reading it costs more than the rest of
    asgi-micro's work on a call."""

    __slots__ = ("_call",)

    def __init__(self, call: Any, remaining: float | None) -> None:
        self._call = call
        self.deadline = None if remaining is None else time.monotonic() + remaining
        self.account = None

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

    @property
    def authorization(self) -> str | None:
        self._read()
        authorization: str | None = _AUTHORIZATION.__get__(self)
        return authorization

    @authorization.setter
    def authorization(self, value: str | None) -> None:
        self._read()
        _AUTHORIZATION.__set__(self, value)

    def _read(self) -> None:
        call, self._call = self._call, None
        if call is None:
            return
        found = read_metadata(call.invocation_metadata())
        _METADATA.__set__(self, {} if found is None else found.metadata)
        _TRACE.__set__(self, {} if found is None else found.trace)
        _AUTHORIZATION.__set__(self, None if found is None else found.authorization)


class UntrustedCallContext(CallContext):
    """The context of a gRPC call to a service that does not trust its callers: their
    ``micro-*`` metadata is not read (the trace is, the bearer token that auth checks, and
    gRPC's own deadline)."""

    __slots__ = ()

    def _read(self) -> None:
        call, self._call = self._call, None
        if call is None:
            return
        found = read_metadata(call.invocation_metadata(), trusted=False)
        _METADATA.__set__(self, {})
        _TRACE.__set__(self, {} if found is None else found.trace)
        _AUTHORIZATION.__set__(self, None if found is None else found.authorization)


def _context_now(call: Any, trusted: bool) -> Context:
    """The context of a call, read at once (``CallContext``, read when first asked for)."""
    context = read_metadata(call.invocation_metadata(), trusted=trusted) or Context()
    remaining = call.time_remaining()
    if remaining is not None:
        context.deadline = time.monotonic() + remaining
    return context


class _Method:
    """What the calls of one RPC served as a gRPC method share: its converters, how it
    fails, its streams."""

    __slots__ = ("decode", "encode", "error_id")

    def __init__(self, host: Host, request: MessageConverter, response: MessageConverter) -> None:
        self.decode = request.decode
        self.encode = response.encode
        self.error_id = host.name

    def requests(self, incoming: AsyncIterator[bytes]) -> AsyncGenerator[Any, None]:
        decode, error_id = self.decode, self.error_id

        async def requests() -> AsyncGenerator[Any, None]:
            async for data in incoming:
                try:
                    yield decode(data)
                except ValidationError as exc:
                    raise BadRequest.from_validation(exc, id=error_id) from None

        return requests()

    def writer(self, call: Any) -> Callable[[Any], Awaitable[None]]:
        encode = self.encode

        async def write(reply: Any) -> None:
            await call.write(encode(reply))

        return write

    def fail(self, call: Any, error: MicroError) -> bool:
        """End the call with ``error`` once the handler returns; whether it is a server
        error."""
        error.id = error.id or self.error_id
        call.set_code(status_for(error))
        call.set_details(error.detail)
        call.set_trailing_metadata(error_metadata(error))
        return error.code >= 500


def method_handler(
    rpc: RPC, host: Host, request: MessageConverter, response: MessageConverter
) -> grpc.RpcMethodHandler:
    """The grpc.aio method handler serving ``rpc`` for ``host``: one entry point (decode, the
    pipeline, encode, account) whichever of the four kinds of method it is, registered as the
    kind it is. What every call needs is bound here, once: a call costs a few local lookups."""
    method = _Method(host, request, response)
    pipeline = host.pipeline
    stats = pipeline.stats
    trusted = host.trust_callers
    call_context = CallContext if trusted else UntrustedCallContext
    decode, encode, name, kind = method.decode, method.encode, rpc.name, rpc.kind
    client_streaming, server_streaming = rpc.client_streaming, rpc.server_streaming
    # The wrappers are in place once the service serves: what the pipeline makes of this RPC
    # is known for good then (before, as in a test that serves by hand, it is asked each call).
    frozen = pipeline.frozen
    direct = pipeline.direct(rpc, "grpc") if frozen else None
    chain = pipeline.handler(rpc) if frozen else None
    eager = frozen and pipeline.gated  # gates read every call's metadata: read it at once

    async def serve(incoming: Any, call: Any) -> bytes | None:
        """One call: ``incoming`` is the request's bytes, or an async iterator over them for a
        stream of requests; the reply's bytes are returned, or a stream of replies written."""
        # Pipeline.begin/end written out: a method call costs more than this, on every call.
        stats.requests += 1
        stats.in_flight += 1
        failed = False
        request: Any = None
        try:
            if client_streaming:
                request = method.requests(incoming)
            else:
                try:
                    request = decode(incoming)
                except ValidationError as exc:
                    failed = method.fail(call, BadRequest.from_validation(exc, id=method.error_id))
                    return None
            if eager:
                context = _context_now(call, trusted)
            else:
                context = call_context(call, call.time_remaining())
            context.activate()  # until the call's task ends
            if direct is not None and context.deadline is None:
                return encode(await direct(request, context))
            handler = chain or pipeline.handler(rpc)
            server_call = Call(
                name,
                "grpc",
                context,
                host=host,
                request=request,
                kind=kind,
                content_type="application/grpc",
                rpc=rpc,
                write=method.writer(call) if server_streaming else None,
            )
            if context.deadline is None:
                result = await handler(server_call)
            else:
                result = await within_deadline(context, handler(server_call))
            if not server_streaming:
                return encode(result)
        except MicroError as exc:
            failed = method.fail(call, exc)
        except Exception:
            logger.exception("%s failed", name)
            failed = method.fail(call, InternalServerError())
        finally:
            if client_streaming:
                await request.aclose()
            stats.in_flight -= 1
            if failed:
                stats.errors += 1
            if pipeline.draining:
                pipeline.ended()
        return None

    if client_streaming:
        if server_streaming:
            return grpc.stream_stream_rpc_method_handler(serve)
        return grpc.stream_unary_rpc_method_handler(serve)
    if server_streaming:
        return grpc.unary_stream_rpc_method_handler(serve)
    return grpc.unary_unary_rpc_method_handler(serve)
