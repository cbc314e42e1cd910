"""Plain routes through the service's wrappers.

An RPC endpoint's entry points run the wrappers themselves. A plain route (``@app.get``, a
Starlette ``Route``, a WebSocket route) is served by FastAPI or Starlette, so the wrappers run
where the router hands the request over: the route's ``handle``, after the router has chosen
the route and before anything of the route runs (its dependencies, its body). The endpoint is
named as the registry lists it, from the route the router chose, so a path spelled another way
(a trailing slash, a percent-encoded character) is either the same endpoint or no endpoint.

For wrappers the route's call has no decoded request; ``await next(call)`` returns ``None`` once
the route has answered, or raises the route's exception, or a ``MicroError`` of the 4xx or 5xx
status it answered with (which then changes nothing on the wire: the answer has gone out).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Iterator
from typing import Any

from fastapi.routing import iter_route_contexts
from starlette.routing import BaseRoute, Mount

from .context import Context, current_context
from .endpoints import route_endpoint
from .errors import MicroError, error_for_status
from .pipeline import Call, Host
from .router import ENDPOINT_EXTENSION, rpc_of
from .state import service_of
from .types import Message, Receive, Scope, Send

__all__ = ["wrap_plain_routes"]

_WRAPPED = "__micro_wrapped__"


def wrap_plain_routes(app: Any) -> None:
    """Run the plain routes of ``app`` through the wrappers of the service serving each
    request (found in the request's scope, so an app served again by another service follows
    it); idempotent."""
    for route in _plain_routes(getattr(app, "routes", None) or ()):
        if not route.__dict__.get(_WRAPPED):
            route.handle = _through_wrappers(route, route.handle)  # type: ignore[method-assign]
            setattr(route, _WRAPPED, True)


def _plain_routes(routes: Any) -> Iterator[BaseRoute]:
    for context in iter_route_contexts(routes):
        route = context.original_route
        if isinstance(route, Mount):
            yield from _plain_routes(getattr(route, "routes", None) or ())
        elif rpc_of(route) is None and getattr(route, "path_format", None) is not None:
            yield route


def _through_wrappers(route: BaseRoute, handle: Any) -> Any:
    names: dict[tuple[Any, ...], tuple[Any, str]] = {}

    async def handle_wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        host = service_of(scope)
        if host is None:
            await handle(scope, receive, send)
            return
        pipeline = host.pipeline
        gates = pipeline.gates
        if gates is None:
            await _chained(host, _named(route, scope, names), handle, scope, receive, send)
            return
        # Nothing but gates (auth), observers (metrics) or nothing at all: no Call, no chain.
        observers = pipeline.observers
        if not gates and not observers:
            await handle(scope, receive, send)
            return
        websocket = scope["type"] == "websocket"
        protocol = "websocket" if websocket else "http"
        endpoint = _named(route, scope, names)
        status = 0

        def watch(message: Message) -> Awaitable[None]:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            return send(message)

        started = time.perf_counter()
        error: BaseException | None = None
        try:
            if gates:
                context = current_context() or Context()
                try:
                    for gate in gates:
                        pending = gate.admit(context, endpoint, protocol)
                        if pending is not None:
                            await pending
                except MicroError as exc:
                    error = exc
                    if not websocket:
                        raise  # answered in Go Micro's shape by MicroMiddleware
                    # Refused before the handshake: a refusal, as RPCs over a WebSocket are.
                    await send({"type": "websocket.close", "code": 4000 + exc.code})
                    return
            if not observers:
                await handle(scope, receive, send)
                return
            await handle(scope, receive, watch)
            if status >= 400:  # told to the observers as the pipeline tells them
                error = error_for_status(status)(f"the route answered {status}")
                error.code = status
        except BaseException as exc:
            error = exc
            raise
        finally:
            if observers:
                elapsed = time.perf_counter() - started
                for observer in observers:
                    observer(None, protocol, endpoint, elapsed, error)

    return handle_wrapped


async def _chained(
    host: Host, endpoint: str, handle: Any, scope: Scope, receive: Receive, send: Send
) -> None:
    """The route through the service's whole chain of wrappers, as a ``Call``."""
    websocket = scope["type"] == "websocket"
    status = 0
    answered: MicroError | None = None  # raised for the wrappers; the client has it

    def watch(message: Message) -> Awaitable[None]:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        return send(message)

    async def serve(call: Call) -> None:
        nonlocal answered
        await handle(scope, receive, watch)
        if status >= 400:
            answered = error_for_status(status)(f"the route answered {status}", id=host.name)
            answered.code = status
            raise answered

    call = Call(
        endpoint,
        "websocket" if websocket else "http",
        current_context() or Context(),
        host=host,
    )
    try:
        await host.pipeline.run(call, serve)
    except MicroError as exc:
        if exc is answered:
            return
        if not websocket:
            raise  # answered in Go Micro's shape by MicroMiddleware
        # Refused before the handshake (a refusal), or after it (a close frame).
        await send({"type": "websocket.close", "code": 4000 + exc.code})


_NAMES = 64  # names kept per route: a request's method is the client's to choose


def _named(route: BaseRoute, scope: Scope, names: dict[tuple[Any, ...], tuple[Any, str]]) -> str:
    """``_name``, remembered per route by what it is made of: the router's context for the
    route (FastAPI's, for an included router), the method and the root paths."""
    fastapi = scope.get("fastapi")
    context = fastapi.get("effective_route_context") if fastapi else None
    key = (
        id(context),
        scope["type"],
        scope.get("method"),
        scope.get("root_path"),
        scope.get("app_root_path"),
    )
    found = names.get(key)
    if found is not None and found[0] is context:
        return found[1]
    name = _name(route, scope)
    if len(names) < _NAMES:
        names[key] = (context, name)
    return name


def _name(route: BaseRoute, scope: Scope) -> str:
    """The route's endpoint name for this request: its full path as the router matched it
    (FastAPI's included routers prefix it; a Mount adds to the root path)."""
    context = scope.get("fastapi", {}).get("effective_route_context")
    source: Any = context if getattr(context, "original_route", None) is route else route
    prefix = ""
    if "app_root_path" in scope:
        prefix = scope.get("root_path", "")[len(scope["app_root_path"]) :]
    path = prefix + str(getattr(source, "path_format", ""))
    if scope["type"] == "websocket":
        return route_endpoint("WEBSOCKET", path)
    named = (getattr(source, "openapi_extra", None) or {}).get(ENDPOINT_EXTENSION)
    return route_endpoint(
        scope["method"], path, named=named, methods=getattr(source, "methods", None) or ()
    )
