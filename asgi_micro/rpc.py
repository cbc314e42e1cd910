"""What an RPC handler is, independent of the protocol that carries it.

``RPC.from_handler`` reads a handler's signature once: the parameter holding the request message,
the return type, and dependencies asgi-micro can resolve without FastAPI (``Store``, ``Context``,
...). Every protocol calls it through the service's pipeline (``asgi_micro.pipeline``).

A dependency whose value lives for the call (a database session) is an async generator, in
FastAPI's ``yield`` style: what it yields is the handler's, and what follows the ``yield`` runs
once the call is over (its reply written, its stream ended), on every protocol.

Streaming follows the signature: an async generator (``-> AsyncIterator[Reply]``) streams its
replies, and a request parameter annotated ``AsyncIterator[Request]`` receives a stream of
requests; both together make a bidirectional stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import typing
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, get_args, get_origin

from fastapi import Request, params
from google.protobuf.message import Message as ProtobufMessage
from pydantic import BaseModel

from .context import Context, current_context
from .messages import MessageType
from .state import service_of

if TYPE_CHECKING:
    from .pipeline import Host

__all__ = ["RPC", "Resolver", "ScopedResolver", "micro_dependency"]

Resolver = Callable[["Host | None", Context], Any]
"""Resolves a dependency from the running service (``None`` without one) and the call's
context."""
ScopedResolver = Callable[["Host | None", Context], AbstractAsyncContextManager[Any]]
"""Enters a dependency that lives for the call, from the same two; exited once it is over."""

_RESOLVER_ATTRIBUTE = "__micro_resolve__"
_SCOPED_ATTRIBUTE = "__micro_enter__"


def micro_dependency(resolve: Callable[[Host | None, Context], Any]) -> Callable[..., Any]:
    """A FastAPI dependency that asgi-micro can also resolve on its own fast path and over gRPC.

    ``resolve(service, context)`` returns the value; or, an async generator, yields it and
    cleans up after the call (FastAPI: after the response is sent). Use the result with
    ``Depends``.
    """
    if inspect.isasyncgenfunction(resolve):
        enter: ScopedResolver = contextlib.asynccontextmanager(resolve)

        async def scoped(request: Request) -> AsyncIterator[Any]:
            context = current_context() or Context.from_headers(request.scope["headers"])
            async with enter(service_of(request.scope), context) as value:
                yield value

        setattr(scoped, _SCOPED_ATTRIBUTE, enter)
        scoped.__name__ = getattr(resolve, "__name__", "micro_dependency")
        return scoped

    def dependency(request: Request) -> Any:
        context = current_context() or Context.from_headers(request.scope["headers"])
        return resolve(service_of(request.scope), context)

    setattr(dependency, _RESOLVER_ATTRIBUTE, resolve)
    dependency.__name__ = getattr(resolve, "__name__", "micro_dependency")
    return dependency


@dataclass(slots=True, eq=False)
class RPC:
    """An RPC endpoint: ``name`` is ``<Router>.<Method>``."""

    name: str
    handler: Callable[..., Any]
    request: MessageType | None
    response: MessageType | None
    request_param: str | None
    resolvers: dict[str, Resolver] = field(default_factory=dict)
    # Dependencies that live for the call: entered before the handler, exited after it.
    scoped: dict[str, ScopedResolver] = field(default_factory=dict)
    # False when a parameter needs FastAPI's machinery (a plain Depends, Request, Header, ...).
    standalone: bool = True
    idempotent: bool = False
    server_streaming: bool = False
    client_streaming: bool = False
    is_async: bool = field(init=False)
    # An async handler whose one parameter is the request, which it may take by position:
    # ``async def hello(req: Model) -> Reply``, the common case, called as it is.
    plain: bool = field(init=False)

    def __post_init__(self) -> None:
        self.is_async = inspect.iscoroutinefunction(self.handler)
        parameters = list(inspect.signature(self.handler).parameters.values())
        self.plain = (
            self.is_async
            and not self.resolvers
            and not self.scoped
            and self.request_param is not None
            and len(parameters) == 1
            and parameters[0].kind
            in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        )

    @classmethod
    def from_handler(cls, name: str, handler: Callable[..., Any], *, idempotent: bool) -> RPC:
        if not callable(handler):
            raise TypeError(f"{name}: the handler must be callable, got {handler!r}")
        try:
            hints = typing.get_type_hints(handler, include_extras=True)
        except NameError as exc:
            raise TypeError(
                f"{name}: cannot resolve the handler's annotations ({exc}); names used in them "
                "must be importable from the handler's module"
            ) from exc
        request_param: str | None = None
        request_type: Any = None
        client_streaming = False
        resolvers: dict[str, Resolver] = {}
        scoped: dict[str, ScopedResolver] = {}
        standalone = True
        for parameter in inspect.signature(handler).parameters.values():
            annotation = hints.get(parameter.name, inspect.Parameter.empty)
            depends = _depends_of(annotation, parameter.default)
            if depends is not None:
                resolver = getattr(depends.dependency, _RESOLVER_ATTRIBUTE, None)
                enter = getattr(depends.dependency, _SCOPED_ATTRIBUTE, None)
                if resolver is not None:
                    resolvers[parameter.name] = resolver
                elif enter is not None:
                    scoped[parameter.name] = enter
                else:
                    standalone = False
                continue
            if annotation is inspect.Parameter.empty:
                raise TypeError(f"{name}: annotate parameter {parameter.name!r} with its type")
            streamed = _iterated(annotation)
            if streamed is not None and _is_message(streamed):
                annotation = streamed
            elif not _is_message(annotation):
                # FastAPI's own parameters (Request, Header(), ...) keep working over HTTP.
                standalone = False
                continue
            if request_param is not None:
                raise TypeError(
                    f"{name}: an RPC handler takes one request message, but {request_param!r} and "
                    f"{parameter.name!r} are both messages; put the fields in one model"
                )
            request_param, request_type = parameter.name, annotation
            client_streaming = streamed is not None

        return_type = hints.get("return", inspect.Parameter.empty)
        server_streaming = inspect.isasyncgenfunction(handler)
        if server_streaming:
            return_type = _iterated(return_type)
            if return_type is None:
                raise TypeError(
                    f"{name}: annotate a streaming handler as returning AsyncIterator[Model]"
                )
        if client_streaming and not inspect.iscoroutinefunction(handler) and not server_streaming:
            raise TypeError(f"{name}: a handler that takes a stream of requests must be async")
        if return_type is type(None):
            return_type = None
        if return_type is inspect.Parameter.empty:
            raise TypeError(
                f"{name}: annotate the return type (a pydantic model, a protobuf message, or None)"
            )
        if return_type is not None and not _is_message(return_type):
            raise TypeError(
                f"{name}: the return type must be a pydantic model, a protobuf message or None, "
                f"got {return_type!r}"
            )
        return cls(
            name=name,
            handler=handler,
            request=None if request_type is None else MessageType(request_type),
            response=None if return_type is None else MessageType(return_type),
            request_param=request_param,
            resolvers=resolvers,
            scoped=scoped,
            standalone=standalone,
            idempotent=idempotent,
            server_streaming=server_streaming,
            client_streaming=client_streaming,
        )

    @property
    def method(self) -> str:
        return self.name.rpartition(".")[2]

    @property
    def router(self) -> str:
        """The ``MicroRouter`` name: ``Greeter`` of ``Greeter.Hello``."""
        return self.name.rpartition(".")[0]

    @property
    def kind(self) -> str:
        """``unary``, ``server`` (a stream of replies), ``client`` (a stream of requests) or
        ``bidi``."""
        return _KINDS[self.server_streaming, self.client_streaming]

    def arguments(self, request: Any, host: Host | None, context: Context) -> dict[str, Any]:
        """Keyword arguments for the handler."""
        kwargs: dict[str, Any] = {}
        if self.request_param is not None:
            kwargs[self.request_param] = request
        for param, resolve in self.resolvers.items():
            kwargs[param] = resolve(host, context)
        return kwargs

    async def enter(
        self,
        stack: contextlib.AsyncExitStack,
        kwargs: dict[str, Any],
        host: Host | None,
        context: Context,
    ) -> dict[str, Any]:
        """``kwargs`` with the dependencies that live for the call, entered on ``stack``."""
        for param, enter in self.scoped.items():
            kwargs[param] = await stack.enter_async_context(enter(host, context))
        return kwargs

    async def invoke(self, kwargs: dict[str, Any]) -> Any:
        """Run a unary handler; a sync handler runs in a worker thread."""
        if self.is_async:
            return await self.handler(**kwargs)
        result = await asyncio.to_thread(self.handler, **kwargs)
        if inspect.isawaitable(result):
            return await result
        return result

    def stream(self, kwargs: dict[str, Any]) -> AsyncGenerator[Any, None]:
        """Run a server-streaming handler: its async generator, to iterate and ``aclose()``."""
        stream: AsyncGenerator[Any, None] = self.handler(**kwargs)
        return stream


_KINDS = {
    (False, False): "unary",
    (True, False): "server",
    (False, True): "client",
    (True, True): "bidi",
}


def _depends_of(annotation: Any, default: Any) -> params.Depends | None:
    if isinstance(default, params.Depends):
        return default
    if get_origin(annotation) is typing.Annotated:
        for extra in reversed(get_args(annotation)[1:]):
            if isinstance(extra, params.Depends):
                return extra
    return None


def _is_message(annotation: Any) -> bool:
    """A pydantic model, or a class generated by protoc."""
    if get_origin(annotation) is typing.Annotated:
        annotation = get_args(annotation)[0]
    return isinstance(annotation, type) and issubclass(annotation, BaseModel | ProtobufMessage)


def _iterated(annotation: Any) -> Any:
    """``X`` of ``AsyncIterator[X]``, ``AsyncIterable[X]`` or ``AsyncGenerator[X, ...]``."""
    if get_origin(annotation) is typing.Annotated:
        annotation = get_args(annotation)[0]
    origin = get_origin(annotation)
    if origin in _ASYNC_ITERATORS:
        return get_args(annotation)[0]
    return None


_ASYNC_ITERATORS = (AsyncIterator, AsyncIterable, AsyncGenerator)
