"""``MicroRouter``: an ``APIRouter`` whose endpoints are named ``<Name>.<Method>``.

``@router.rpc()`` turns an async function taking and returning pydantic models into an RPC
endpoint served at ``POST /<name>/<method>``. It stays a normal FastAPI route (OpenAPI, docs,
``include_router``), but requests skip FastAPI's per-request machinery: the body is validated
by pydantic-core straight from bytes in any supported codec and the reply is serialised straight
to bytes. Whenever something needs FastAPI itself (a plain ``Depends``, ``Request``, router-level
dependencies, dependency overrides), the route falls back to it, with the same error shape.

Streaming handlers are served too, by ``streaming``: an async generator streams its replies
as NDJSON or Server-Sent Events, and a handler taking ``AsyncIterator[Request]`` is a WebSocket
at the same path.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import re
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, TypeVar

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from .codec import JSON, Codec, codec_for_accept
from .context import Context, current_context, read_headers, within_deadline
from .errors import (
    BadRequest,
    InternalServerError,
    MicroError,
    NotAcceptable,
    error_for_status,
    validation_detail,
)
from .naming import method_name
from .pipeline import Call, Host, standalone
from .responses import (
    DEFAULT_MAX_BODY,
    media_types,
    read_body,
    request_codec,
    send_failure,
    send_response,
)
from .rpc import RPC
from .state import service_of
from .streaming import serve_stream, websocket_endpoint
from .types import Receive, Scope, Send

__all__ = ["ENDPOINT_EXTENSION", "MicroRoute", "MicroRouter", "rpc_of", "serve_rpc"]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

ENDPOINT_EXTENSION = "x-micro-endpoint"
"""OpenAPI extension naming an operation's endpoint; the registry reads it."""

_RPC_ATTRIBUTE = "__micro_rpc__"
_MISSING = object()


class MicroRouter(APIRouter):
    """An ``APIRouter`` for the endpoints ``<name>.<Method>``, mounted at ``/<name lower-case>``."""

    def __init__(self, name: str, *, prefix: str | None = None, **kwargs: Any) -> None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"a router name must be an identifier such as 'Greeter', got {name!r}")
        kwargs.setdefault("route_class", MicroRoute)
        super().__init__(prefix=f"/{name.lower()}" if prefix is None else prefix, **kwargs)
        self.name = name
        self.rpcs: dict[str, RPC] = {}

    def rpc(
        self,
        path: str | None = None,
        *,
        name: str | None = None,
        idempotent: bool = False,
        **route_options: Any,
    ) -> Callable[[F], F]:
        """Serve a handler as the RPC endpoint ``<Name>.<Method>``.

        ``name`` overrides the method name (default: the function name in CamelCase), ``path``
        the HTTP path (default: ``/<function name>``). ``idempotent=True`` declares that calling
        it twice has the effect of calling it once, which lets clients retry it after a failure
        that may have reached the server. Other options go to ``APIRouter.add_api_route``.
        """

        def decorator(handler: F) -> F:
            method = name or method_name(handler.__name__)
            if method in self.rpcs:
                raise ValueError(f"{self.name}.{method} is defined twice")
            spec = RPC.from_handler(f"{self.name}.{method}", handler, idempotent=idempotent)
            self.rpcs[method] = spec
            setattr(handler, _RPC_ATTRIBUTE, spec)
            if spec.client_streaming:
                self._add_websocket_rpc(spec, path or f"/{handler.__name__}", route_options)
                return handler
            if not spec.server_streaming:
                # A stream's item type comes from the annotation; FastAPI documents it as such.
                route_options.setdefault(
                    "response_model", spec.response.type if spec.response else None
                )
            route_options.setdefault("name", spec.name)
            self.add_api_route(
                path or f"/{handler.__name__}", handler, methods=["POST"], **route_options
            )
            return handler

        return decorator

    def _add_websocket_rpc(self, spec: RPC, path: str, route_options: dict[str, Any]) -> None:
        unsupported = set(route_options) - {"dependencies"}
        if unsupported:
            raise TypeError(
                f"{spec.name}: a WebSocket endpoint takes no route options but dependencies, "
                f"got {', '.join(sorted(unsupported))}"
            )
        if not spec.standalone:
            raise TypeError(
                f"{spec.name}: a handler taking a stream of requests is served without FastAPI; "
                "its parameters can only be asgi-micro dependencies (asgi_micro.fastapi)"
            )
        self.add_api_websocket_route(
            path, websocket_endpoint(spec), name=spec.name, **route_options
        )

    def add_api_route(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        spec: RPC | None = getattr(endpoint, _RPC_ATTRIBUTE, None)
        endpoint_name = spec.name if spec else f"{self.name}.{method_name(endpoint.__name__)}"
        kwargs["openapi_extra"] = {
            ENDPOINT_EXTENSION: endpoint_name,
            **(kwargs.get("openapi_extra") or {}),
        }
        super().add_api_route(path, endpoint, **kwargs)


class MicroRoute(APIRoute):
    """An ``APIRoute`` that serves RPC endpoints on the fast path and renders every error in
    Go Micro's shape."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        # Before APIRoute.__init__, which builds the handler.
        self.rpc: RPC | None = getattr(endpoint, _RPC_ATTRIBUTE, None)
        if self.rpc is not None and not self.rpc.standalone:
            endpoint = _reporting(endpoint)
        super().__init__(path, endpoint, **kwargs)
        self.fast = self.rpc is not None and self.rpc.standalone and not self.dependencies

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.fast and scope["method"] == "POST" and self.fast_allowed(scope):
            await self.serve_fast(scope, receive, send)
            return
        await super().handle(scope, receive, send)

    async def serve_fast(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the RPC without FastAPI; the caller checked ``fast_allowed``."""
        assert self.rpc is not None
        host = service_of(scope)
        limits = (
            self.max_body_size,
            getattr(scope.get("app"), "max_body_size", None),
            DEFAULT_MAX_BODY if host is None else host.max_message_size,
        )
        limit = min(x for x in limits if x)
        if self.rpc.server_streaming:
            await serve_stream(self.rpc, scope, receive, send, limit=limit)
        else:
            await serve_rpc(self.rpc, scope, receive, send, limit=limit)

    def fast_allowed(self, scope: Scope) -> bool:
        """Whether this request may skip FastAPI: nothing it would run may be skipped."""
        assert self.rpc is not None
        overridable = self.rpc.resolvers or self.rpc.scoped
        if overridable and getattr(scope.get("app"), "dependency_overrides", None):
            return False  # tests override dependencies through FastAPI; let FastAPI resolve them
        fastapi_scope = scope.get("fastapi")
        if fastapi_scope:
            included = fastapi_scope.get("effective_route_context")
            if included is not None:
                # include_router(..., dependencies=[...]) must run them: never skip security.
                dependencies = getattr(included, "dependencies", _MISSING)
                if dependencies is _MISSING or dependencies:
                    return False
        return True

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()
        rpc = self.rpc

        async def micro_handler(request: Request) -> Response:
            host = service_of(request.scope)
            error_id = host.name if host else (rpc.name if rpc else "")
            try:
                if rpc is None or host is None:
                    response: Response = await handler(request)
                    return response
                return await _through_pipeline(rpc, host, request, handler)
            except MicroError as exc:
                error: MicroError = exc
            except RequestValidationError as exc:
                error = BadRequest(validation_detail(exc.errors()))
            except HTTPException as exc:
                error = error_for_status(exc.status_code)(str(exc.detail))
            except Exception:
                if rpc is None:
                    raise  # plain routes keep the app's own exception handlers
                logger.exception("%s failed", rpc.name)
                error = InternalServerError()
            error.id = error.id or error_id
            return Response(error.to_json(), status_code=error.code, media_type="application/json")

        return micro_handler


# -- the FastAPI path: RPC handlers whose parameters FastAPI resolves --------------------------

_reported: ContextVar[list[Any] | None] = ContextVar("asgi_micro_reported", default=None)


def _reporting(handler: Callable[..., Any]) -> Callable[..., Any]:
    """``handler`` as FastAPI's endpoint, reporting what it returns to the pipeline that runs
    it (FastAPI turns it into a response, which the pipeline's wrappers do not see)."""
    if inspect.isasyncgenfunction(handler):
        return handler  # FastAPI streams it; wrappers see the stream end, not its items
    is_async = inspect.iscoroutinefunction(handler)

    @functools.wraps(handler)
    async def endpoint(*args: Any, **kwargs: Any) -> Any:
        if is_async:
            result = await handler(*args, **kwargs)
        else:
            result = await asyncio.to_thread(handler, *args, **kwargs)
        holder = _reported.get()
        if holder is not None:
            holder.append(result)
        return result

    return endpoint


async def _through_pipeline(
    rpc: RPC, host: Host, request: Request, fastapi_handler: Callable[[Request], Any]
) -> Response:
    """Run an RPC that FastAPI resolves through the pipeline: the body decoded (in any codec)
    for the wrappers first, then FastAPI's own handler (dependencies, the call, the reply)."""
    pipeline = host.pipeline
    decoded = None
    if pipeline.wrappers and rpc.request is not None:
        content_type, _ = media_types(request.scope["headers"])
        codec = request_codec(content_type)
        body = await request.body()
        try:
            decoded = codec.decode(body, rpc.request)
        except ValidationError as exc:
            raise BadRequest.from_validation(exc, id=host.name) from None
        if codec is not JSON:
            # FastAPI reads JSON bodies only: hand it the same request as JSON.
            request._body = JSON.encode(decoded, rpc.request)
            request.scope["headers"] = [
                *((k, v) for k, v in request.scope["headers"] if k != b"content-type"),
                (b"content-type", b"application/json"),
            ]
    context = current_context() or read_headers(request.scope["headers"]) or Context()
    call = Call(
        rpc.name,
        "http",
        context,
        host=host,
        request=decoded,
        kind=rpc.kind,
        rpc=rpc,
        content_type="application/json",
    )
    responses: list[Response] = []

    async def fastapi(call: Call) -> Any:
        reported: list[Any] = []
        token = _reported.set(reported)
        try:
            responses.append(await fastapi_handler(request))
        finally:
            _reported.reset(token)
        return reported[0] if reported else None

    result = await pipeline.run(call, fastapi)
    if responses:
        return responses[-1]
    # A wrapper answered without calling on: its reply, in the endpoint's shape.
    payload = JSON.encode({}) if rpc.response is None else _reply_bytes(JSON, rpc, result)
    return Response(payload, media_type="application/json")


# -- the fast path ------------------------------------------------------------------------------


async def serve_rpc(
    rpc: RPC, scope: Scope, receive: Receive, send: Send, *, limit: int = DEFAULT_MAX_BODY
) -> None:
    """Decode, run through the pipeline and encode one RPC over HTTP, without Starlette's
    request objects."""
    host = service_of(scope)
    error_id = host.name if host else rpc.name
    content_type, accept = media_types(scope["headers"])
    try:
        codec = request_codec(content_type)
        reply_codec = codec_for_accept(accept, codec)
        if reply_codec is None:
            raise NotAcceptable(f"cannot produce any of {accept!r}")
        body = await read_body(receive, limit=limit)
        try:
            request = codec.decode(body, rpc.request) if rpc.request is not None else None
        except ValidationError as exc:
            raise BadRequest.from_validation(exc, id=error_id) from None
        context = current_context()  # MicroMiddleware's, whose deadline it enforces
        own = context is None
        if own:
            context = read_headers(scope["headers"])
        direct = host.pipeline.direct(rpc) if host is not None else None
        if direct is not None and (context is None or not own):
            # Nothing but gates around the handler, and no deadline of its own to enforce
            # here: the request (and the context, for the gates) is all it takes.
            result = await direct(request, context if context is not None else Context())
        else:
            call = Call(
                rpc.name,
                "http",
                context or Context(),
                host=host,
                request=request,
                content_type=codec.content_type,
                rpc=rpc,
            )
            handler = host.pipeline.handler(rpc) if host is not None else standalone(rpc)
            if not own:
                result = await handler(call)
            elif call.context.deadline is None:
                token = call.context.activate()  # current for the handler, as under the middleware
                try:
                    result = await handler(call)
                finally:
                    Context.reset(token)
            else:
                result = await within_deadline(call.context, handler(call))
        payload = _reply_bytes(reply_codec, rpc, result)
    except Exception as exc:
        await send_failure(send, exc, error_id=error_id, name=rpc.name)
        return
    await send_response(send, 200, payload, reply_codec.content_type.encode("latin-1"))


def _reply_bytes(codec: Codec, rpc: RPC, result: Any) -> bytes:
    if rpc.response is None:
        return codec.encode({})
    if not isinstance(result, rpc.response.type):
        result = rpc.response.validate_python(result)
    return codec.encode(result, rpc.response)


def rpc_of(route: Any) -> RPC | None:
    """The RPC a route serves: a ``MicroRoute``'s, or a streaming one's WebSocket."""
    rpc = getattr(route, "rpc", None)
    if rpc is None:
        rpc = getattr(getattr(route, "endpoint", None), "rpc", None)
    return rpc if isinstance(rpc, RPC) else None
