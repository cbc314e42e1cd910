"""``MicroMiddleware``: the one line that makes an existing ASGI app a micro service.

    app.add_middleware(MicroMiddleware, service=Service("inventory"))

It starts and stops the service inside the app's lifespan, serves ``/_micro/`` (health, stats,
metrics, registry record) and the probes ``/livez`` and ``/readyz``, and is where HTTP requests
and WebSocket sessions enter the service's call pipeline: each is counted in flight (a drain
waits for it), its ``Micro-*`` metadata and deadline become the context that onward calls
reuse, and every error response gets Go Micro's shape. It holds every request to the service's
``max_message_size``: a body whose ``Content-Length`` says more is refused (413) before the app
runs, a chunked one as soon as it passes the limit, and a WebSocket message over it closes the
session (1009). The wrappers run where the route is known: in the RPC entry points, and for
plain routes in ``asgi_micro.routes``. It is pure ASGI: a request costs two header scans (the
metadata, the body's length) and a send wrapper, not a Starlette object.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Generator
from typing import Any, Protocol

import orjson
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from .context import read_headers, within_deadline, without_metadata
from .endpoints import INTERNAL_PREFIX
from .errors import (
    BadRequest,
    InternalServerError,
    MicroError,
    PayloadTooLarge,
    error_for_status,
    validation_detail,
)
from .internal import JWKS_PATH, PROBE_PATHS, Introspectable, serve_internal
from .redirects import relative_redirect
from .responses import declared_length, send_error
from .router import MicroRoute
from .state import STATE_KEY, expose
from .types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["MicroMiddleware", "Served"]

logger = logging.getLogger(__name__)

_INTERNAL = INTERNAL_PREFIX + "/"
_SHAPED_TYPES = (b"application/json", b"text/plain")
_MAX_SHAPED_BODY = 64 * 1024
_CLOSE = ((b"connection", b"close"),)
_TOP_LEVEL = frozenset({JWKS_PATH, *PROBE_PATHS})  # internal routes outside /_micro/


class Served(Introspectable, Protocol):
    """What the middleware needs of the service it runs: the lifecycle around the app's."""

    @property
    def max_message_size(self) -> int: ...

    @property
    def trust_callers(self) -> bool: ...

    def attach(self, app: ASGIApp) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def drain_on_exit_signals(self) -> None: ...


class MicroMiddleware:
    """Pure ASGI middleware that makes ``app`` the served app of ``service``: lifespan,
    ``/_micro/`` routes, metadata and deadlines in, Go Micro's error shape out."""

    def __init__(self, app: ASGIApp, *, service: Served) -> None:
        self.app = app
        self.service = service
        self._shortcuts: dict[str, MicroRoute] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # HTTP is served here rather than in a method of its own: every request pays for this
        # function, so it pays for one frame (and the service is exposed in the scope inline).
        if scope["type"] != "http":
            await self._not_http(scope, receive, send)
            return
        service = self.service
        state = scope.get("state")
        if state is None:
            scope["state"] = {STATE_KEY: service}
        elif STATE_KEY not in state:
            state[STATE_KEY] = service
        path = scope["path"]
        if path.startswith(_INTERNAL) or path in _TOP_LEVEL:
            await serve_internal(service, scope, receive, send)
            return
        if not service.trust_callers:
            scope["headers"] = without_metadata(scope["headers"])
        length = declared_length(scope)
        if length is None:
            receive = _limited(receive, service.max_message_size)
        elif length > service.max_message_size:
            error = PayloadTooLarge(
                f"request body of {length} bytes, over {service.max_message_size}",
                id=service.name,
            )
            await send_error(send, error, headers=_CLOSE)
            return
        handler: ASGIApp = self.app
        shortcuts = self._shortcuts if self._shortcuts is not None else self._build_shortcuts()
        if shortcuts:
            route = shortcuts.get(path)
            if route is not None and scope["method"] == "POST" and route.fast_allowed(scope):
                handler = route.serve_fast
        pipeline = service.pipeline
        pipeline.begin()
        status = 0
        held: list[Message] | None = None

        # A plain function handing back the server's awaitable: no coroutine of its own for
        # each message of each response.
        def send_shaped(message: Message) -> Awaitable[None]:
            nonlocal status, held
            if held is None:
                if message["type"] == "http.response.start":
                    status = message["status"]
                    if 300 <= status < 400:  # never a Location built from the Host header
                        message = relative_redirect(message, scope)
                    if pipeline.draining or status == 413:
                        # Draining: callers then open a new connection, which finds another
                        # node. 413: the rest of the body is not worth reading.
                        message["headers"] = [
                            *message.get("headers", ()),
                            (b"connection", b"close"),
                        ]
                    if status >= 400 and _shapeable(message):
                        held = [message]
                        return _SENT
                return send(message)
            held.append(message)
            if message.get("more_body", False):
                return _SENT
            return _send_all(send, _shape_error(held, service.name))

        try:
            context = read_headers(scope["headers"])
            if context is None:
                await handler(scope, receive, send_shaped)
            else:
                await within_deadline(context, handler(scope, receive, send_shaped))
        except MicroError as exc:  # a bad Micro-Timeout, the deadline, a wrapper's refusal
            if not status:
                exc.id = exc.id or service.name
                await send_error(send, exc, headers=_CLOSE if exc.code == 413 else ())
                status = exc.code
        except ClientDisconnect:
            pass  # gone before its body was all sent (or timed out sending it): none to answer
        except Exception:
            logger.exception("unhandled error in %s %s", scope["method"], path)
            if not status:
                await send_error(send, InternalServerError(id=service.name))
            status = 500
        finally:
            pipeline.end(failed=status >= 500)

    async def _not_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope_type = scope["type"]
        if scope_type == "websocket":
            await self._websocket(scope, receive, send)
        elif scope_type == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        service = self.service
        expose(scope, service)
        if not service.trust_callers:
            scope["headers"] = without_metadata(scope["headers"])
        limit = service.max_message_size
        closed = False

        # The server may take larger messages (uvicorn's --ws-max-size is 16 MiB unless told):
        # one over the service's limit closes the session, and the app sees it end.
        async def receive_limited() -> Message:
            nonlocal closed
            message = await receive()
            if message["type"] == "websocket.receive" and _oversized(message, limit):
                closed = True
                reason = f"message over {limit} bytes"
                await send({"type": "websocket.close", "code": 1009, "reason": reason})
                return {"type": "websocket.disconnect", "code": 1009, "reason": reason}
            return message

        def send_unless_closed(message: Message) -> Awaitable[None]:
            return _SENT if closed else send(message)

        pipeline = service.pipeline
        pipeline.begin()
        failed = False
        try:
            context = read_headers(scope["headers"])
            app = self.app(scope, receive_limited, send_unless_closed)
            if context is None:
                await app
            else:
                await within_deadline(context, app)
        except MicroError as exc:
            # A bad Micro-Timeout, or the deadline: closed with the error's code, as RPCs over
            # a WebSocket are (4000 + the HTTP status; before the handshake, a refusal).
            failed = exc.code >= 500
            with contextlib.suppress(RuntimeError, OSError):
                await send({"type": "websocket.close", "code": 4000 + exc.code})
        except Exception:
            failed = True
            raise
        finally:
            pipeline.end(failed=failed)

    def _build_shortcuts(self) -> dict[str, MicroRoute]:
        if self.service.app is None:
            return {}  # not started yet: try again on the next request
        self._shortcuts = _rpc_shortcuts(self.service.app)
        return self._shortcuts

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        service = self.service
        expose(scope, service)
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


def _rpc_shortcuts(app: Any) -> dict[str, MicroRoute]:
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


def _limited(receive: Receive, limit: int) -> Receive:
    """``receive``, refusing the body as soon as more than ``limit`` bytes of it arrived."""
    received = 0

    async def receive_limited() -> Message:
        nonlocal received
        message = await receive()
        body = message.get("body")
        if body:
            received += len(body)
            if received > limit:
                raise _BodyTooLarge(f"request body over {limit} bytes")
        return message

    return receive_limited


class _BodyTooLarge(PayloadTooLarge, HTTPException):
    """What ``receive`` raises past the limit: a ``MicroError`` for asgi-micro's handlers, and
    an ``HTTPException`` so that FastAPI, which makes any other error while it reads a body a
    400, lets it through (as it does Starlette's own body limit)."""

    def __init__(self, detail: str) -> None:
        PayloadTooLarge.__init__(self, detail)
        self.status_code = self.code
        self.headers = None


def _oversized(message: Message, limit: int) -> bool:
    data = message.get("bytes")
    if data is not None:
        return len(data) > limit
    text: str = message.get("text") or ""
    # A character is 1 to 4 bytes of UTF-8: encode only a text that may be over.
    return len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit)


class _Sent:
    """An awaitable that is done already: what a send held back returns."""

    def __await__(self) -> Generator[Any, None, None]:
        return iter(())  # type: ignore[return-value]


_SENT = _Sent()


async def _send_all(send: Send, messages: list[Message]) -> None:
    for message in messages:
        await send(message)


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
        return BadRequest(validation_detail(detail))
    error = error_for_status(status)(
        detail if isinstance(detail, str) else orjson.dumps(detail).decode()
    )
    error.code = status
    return error
