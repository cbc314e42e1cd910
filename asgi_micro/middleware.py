"""``MicroMiddleware``: the one line that makes an existing ASGI app a micro service.

    app.add_middleware(MicroMiddleware, service=Service("inventory"))

It starts and stops the service inside the app's lifespan, serves ``/_micro/`` (health, stats,
registry record), puts each request's ``Micro-*`` metadata and deadline into the context that
onward calls reuse, and gives every error response Go Micro's shape. It is pure ASGI: a request
it has nothing to do for costs a header scan and a context switch, not a Starlette object.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts

from .context import Context, within_deadline
from .endpoints import INTERNAL_PREFIX
from .errors import InternalServerError, MicroError, error_for_status
from .internal import serve_internal
from .responses import send_error, validation_detail
from .router import MicroRoute
from .state import STATE_KEY
from .types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from .service import Service

__all__ = ["MicroMiddleware"]

logger = logging.getLogger("asgi_micro")

_INTERNAL = INTERNAL_PREFIX + "/"
_SHAPED_TYPES = (b"application/json", b"text/plain")
_MAX_SHAPED_BODY = 64 * 1024


class MicroMiddleware:
    def __init__(self, app: ASGIApp, *, service: Service) -> None:
        self.app = app
        self.service = service
        self._shortcuts: dict[str, MicroRoute] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope_type = scope["type"]
        if scope_type == "http":
            await self._http(scope, receive, send)
        elif scope_type == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            self._expose_service(scope)
            context = Context.carried_by(scope["headers"])
            if context is None:
                await self.app(scope, receive, send)
            else:
                await within_deadline(context, self.app(scope, receive, send))

    def _expose_service(self, scope: Scope) -> None:
        state = scope.get("state")
        if state is None:
            scope["state"] = {STATE_KEY: self.service}
        elif STATE_KEY not in state:
            state[STATE_KEY] = self.service

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        service = self.service
        state = scope.get("state")
        if state is None:
            scope["state"] = {STATE_KEY: service}
        elif STATE_KEY not in state:
            state[STATE_KEY] = service
        path = scope["path"]
        if path.startswith(_INTERNAL):
            await serve_internal(service, scope, send)
            return
        handler: ASGIApp = self.app
        shortcuts = self._shortcuts if self._shortcuts is not None else self._build_shortcuts()
        if shortcuts:
            route = shortcuts.get(path)
            if route is not None and scope["method"] == "POST" and route.fast_allowed(scope):
                handler = route.serve_fast
        stats = service.stats
        stats.requests += 1
        stats.in_flight += 1
        status = 0
        held: list[Message] | None = None

        async def send_shaped(message: Message) -> None:
            nonlocal status, held
            if held is None:
                if message["type"] == "http.response.start":
                    status = message["status"]
                    if service.draining:
                        # Callers then open a new connection, which finds another node.
                        message["headers"] = [
                            *message.get("headers", ()),
                            (b"connection", b"close"),
                        ]
                    if status >= 400 and _shapeable(message):
                        held = [message]
                        return
                await send(message)
                return
            held.append(message)
            if not message.get("more_body", False):
                for shaped in _shape_error(held, service.name):
                    await send(shaped)

        context = Context.carried_by(scope["headers"])
        try:
            if context is None:
                await handler(scope, receive, send_shaped)
            else:
                await within_deadline(context, handler(scope, receive, send_shaped))
        except MicroError as exc:  # the deadline passed
            await self._fail(exc, status, send)
            status = status or exc.code
        except Exception:
            logger.exception("unhandled error in %s %s", scope["method"], path)
            await self._fail(InternalServerError(), status, send)
            status = status or 500
        finally:
            stats.in_flight -= 1
            if status >= 500:
                stats.errors += 1
            if service.draining:
                service.request_finished()

    def _build_shortcuts(self) -> dict[str, MicroRoute]:
        if self.service.app is None:
            return {}  # not started yet: try again on the next request
        self._shortcuts = rpc_shortcuts(self.service.app)
        return self._shortcuts

    async def _fail(self, error: MicroError, status: int, send: Send) -> None:
        if status:
            return  # the response has begun; the connection is all that can be dropped
        error.id = error.id or self.service.name
        await send_error(send, error)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        service = self.service
        service.middleware_active = True
        self._expose_service(scope)
        app = scope.get("app")

        async def receive_first_stop() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                # Deregister and drain before the app closes what requests still use.
                await service.stop()
            return message

        async def send_then_start(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                try:
                    if app is not None:
                        service.attach(app)
                    await service.start()
                    service.drain_on_exit_signals()
                except Exception as exc:
                    logger.exception("service %s failed to start", service.name)
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
            await send(message)

        await self.app(scope, receive_first_stop, send_then_start)


def rpc_shortcuts(app: Any) -> dict[str, MicroRoute]:
    """RPC routes the middleware may serve without the app's stack: by exact path, in apps with
    no middleware of their own (which must never be skipped), without router-level
    dependencies."""
    if not isinstance(app, FastAPI) or app.root_path:
        return {}
    if any(middleware.cls is not MicroMiddleware for middleware in app.user_middleware):  # type: ignore[comparison-overlap]
        return {}
    shortcuts = {}
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        path = context.path or ""
        if (
            isinstance(route, MicroRoute)
            and route.fast
            and "{" not in path
            and not context.dependencies
        ):
            shortcuts[path] = route
    return shortcuts


def _shapeable(start: Message) -> bool:
    for name, value in start.get("headers", ()):
        if name == b"content-type":
            return bool(value.startswith(_SHAPED_TYPES))
    return False


def _shape_error(held: list[Message], error_id: str) -> list[Message]:
    """FastAPI's ``{"detail": ...}`` and Starlette's plain-text errors in Go Micro's shape; any
    other body (already shaped, or the app's own format) is sent as it was."""
    start = held[0]
    body = b"".join(message.get("body", b"") for message in held[1:])
    status: int = start["status"]
    content_type = next((v for k, v in start.get("headers", ()) if k == b"content-type"), b"")
    error = None
    if len(body) <= _MAX_SHAPED_BODY:
        if content_type.startswith(b"application/json"):
            error = _from_detail(status, body)
        elif content_type.startswith(b"text/plain"):
            error = error_for_status(status)(body.decode("utf-8", "replace"))
            error.code = status
    if error is None:
        return [start, {"type": "http.response.body", "body": body}]
    error.id = error_id
    payload = error.to_json()
    headers = [
        (name, value)
        for name, value in start.get("headers", ())
        if name not in (b"content-type", b"content-length")
    ]
    headers += [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    return [
        {"type": "http.response.start", "status": error.code, "headers": headers},
        {"type": "http.response.body", "body": payload},
    ]


def _from_detail(status: int, body: bytes) -> MicroError | None:
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or set(data) != {"detail"}:
        return None
    detail = data["detail"]
    if status == 422 and isinstance(detail, list):
        # FastAPI's request validation errors: a bad request, naming the fields.
        return error_for_status(400)(validation_detail(detail))
    error = error_for_status(status)(
        detail if isinstance(detail, str) else orjson.dumps(detail).decode()
    )
    error.code = status
    return error
