"""The dashboard's Starlette app: pages rendered on the server, a JSON endpoint that calls
services, and a stream of registry changes for live updates.

    GET  /                       the services: name, versions, node count
    GET  /services/{name}        its nodes (health, stats), endpoints (schemas, call forms), topics
    GET  /topics                 every topic, with who publishes it and who subscribes
    GET  /fragments/...          the parts of those pages that update live
    GET  /events                 Server-Sent Events: ``change`` with the names of changed services
    POST /api/call               {"service", "endpoint", "request"} -> {"reply"} or {"replies"}

The call endpoint calls only what the registry lists: an RPC endpoint of a service with live
nodes, through the resilient client (node selection, retries, the deadline). It takes JSON only,
and refuses a request whose ``Origin`` is another site, so that a web page the user visits
cannot make the dashboard call services on its behalf (a cross-site form cannot send JSON, and
a cross-site ``fetch`` carries its origin). With ``loopback_only`` (what ``asgi-micro web``
sets when it binds loopback) it also refuses every request whose ``Host`` is not a loopback
name, which defeats DNS rebinding: a site whose name the attacker points at 127.0.0.1 would
otherwise be the dashboard's own origin.

With auth on, a call goes with the token the page was given (its ``Authorization`` header,
from the token field of the page), else with the dashboard's own ``token``, else with none: the
service decides by that account, as it decides for any caller. ``trusts`` (the registration
check of the deployment's key ring) keeps the token from any node whose registration does not
verify.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..client import Client
from ..errors import BadRequest, Forbidden, MicroError, NotFound, PayloadTooLarge
from ..gateway.acting import acting_for, send_authorization
from ..gateway.catalogue import merged
from ..registry import Node, Registry
from ..responses import send_error
from ..types import ASGIApp, Receive, Scope, Send
from . import pages
from .changes import Changes
from .probes import Topic, look_at, topics_of

__all__ = ["CALLER", "Dashboard", "LoopbackHosts"]

CALLER: Final = "asgi-micro-web"
"""The name the dashboard calls services under (``Micro-From-Service``)."""
MAX_REQUEST: Final = 1024 * 1024
MAX_REPLIES: Final = 100
"""Replies of a stream shown at most: a page shows them whole."""
KEEPALIVE: Final = 15.0
"""Seconds between comments on an idle event stream, so that a dead connection is noticed."""
_STATIC: Final = Path(__file__).with_name("static")


class Dashboard:
    """The dashboard of ``registry``; ``app`` is the ASGI app, whose lifespan (or ``async
    with dashboard:``) starts the registry, the watch and the client, and stops them."""

    def __init__(
        self,
        registry: Registry,
        *,
        timeout: float = 10.0,
        loopback_only: bool = False,
        token: str | None = None,
        trusts: Callable[[str, Node], bool] | None = None,
    ) -> None:
        self.registry = registry
        self.authorization = None if token is None else _bearer_value(token)
        self.client = Client(
            registry=registry,
            caller=CALLER,
            timeout=timeout,
            wrappers=[send_authorization],
            trusts=trusts,
        )
        self.changes = Changes(registry)
        self.app = Starlette(
            routes=[
                Route("/", self.index),
                Route("/services/{name:path}", self.service),
                Route("/topics", self.topics),
                Route("/fragments/services", self.services_fragment),
                Route("/fragments/nodes/{name:path}", self.nodes_fragment),
                Route("/events", self.events),
                Route("/api/call", self.call, methods=["POST"]),
                Mount("/static", StaticFiles(directory=_STATIC), name="static"),
            ],
            middleware=[Middleware(LoopbackHosts)] if loopback_only else [],
            lifespan=self._lifespan,
        )

    async def start(self) -> None:
        await self.registry.start()
        await self.changes.start()

    async def stop(self) -> None:
        await self.changes.stop()
        await self.client.aclose()
        await self.registry.stop()

    async def __aenter__(self) -> Dashboard:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        async with self:
            yield

    # -- pages --------------------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        records = await self.registry.list_services()
        return _html(pages.index_page(records, root=_root(request)))

    async def services_fragment(self, request: Request) -> Response:
        records = await self.registry.list_services()
        return _html(pages.services_fragment(records, root=_root(request)))

    async def service(self, request: Request) -> Response:
        name = request.path_params["name"]
        records = await self.registry.get_service(name)
        if not any(record.nodes for record in records):
            return _html(pages.missing_page(name, root=_root(request)), status_code=404)
        views, topics = await asyncio.gather(
            look_at(self.client.transport, records), topics_of(self.client.transport, records)
        )
        endpoints = merged(records).values()
        return _html(
            pages.service_page(name, records, views, endpoints, topics, root=_root(request))
        )

    async def nodes_fragment(self, request: Request) -> Response:
        records = await self.registry.get_service(request.path_params["name"])
        return _html(pages.nodes_fragment(await look_at(self.client.transport, records)))

    async def topics(self, request: Request) -> Response:
        names = sorted({record.name for record in await self.registry.list_services()})
        found = await asyncio.gather(*(self._topics_of(name) for name in names))
        topics = [topic for service in found for topic in service]
        return _html(pages.topics_page(topics, root=_root(request)))

    async def _topics_of(self, name: str) -> list[Topic]:
        return await topics_of(self.client.transport, await self.registry.get_service(name))

    # -- live updates -------------------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        async def stream() -> AsyncIterator[bytes]:
            with self.changes.listen() as listener:
                # Said once listening: a page that reconnects reloads what it may have missed.
                yield b"retry: 2000\nevent: ready\ndata: {}\n\n"
                while True:
                    changed = await listener.next(KEEPALIVE)
                    if not changed:
                        yield b": idle\n\n"
                        continue
                    yield b"event: change\ndata: " + orjson.dumps(sorted(changed)) + b"\n\n"

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    # -- calls --------------------------------------------------------------------------------

    async def call(self, request: Request) -> Response:
        try:
            service, endpoint, payload = await _call_request(request)
            stream = await self._rpc_stream(service, endpoint)
            authorization = request.headers.get("authorization") or self.authorization
            with acting_for(authorization):
                return JSONResponse(await self._call(service, endpoint, payload, stream))
        except MicroError as exc:
            return JSONResponse({"error": exc.to_dict()}, status_code=exc.code)
        except ValueError as exc:  # what the client refuses before calling
            return JSONResponse({"error": BadRequest(str(exc), id=CALLER).to_dict()}, 400)

    async def _rpc_stream(self, service: str, endpoint: str) -> str:
        """How ``endpoint`` of ``service`` streams (``""``: not at all), if the registry lists
        it as an RPC endpoint of a live node; else ``NotFound``."""
        found = merged(await self.registry.get_service(service)).get(endpoint)
        if found is None or found.metadata.get("kind") != "rpc":
            raise NotFound(f"the registry lists no RPC endpoint {endpoint} of {service}", id=CALLER)
        return found.metadata.get("stream", "")

    async def _call(self, service: str, endpoint: str, payload: Any, stream: str) -> Any:
        if not stream:
            return {"reply": await self.client.call(service, endpoint, payload)}
        if stream in ("client", "bidi"):  # over HTTP these are WebSockets: gRPC it is
            requests = payload if isinstance(payload, list) else [payload]
            replies = self.client.stream(service, endpoint, requests, transport="grpc")
        else:
            replies = self.client.stream(service, endpoint, payload)
        collected: list[Any] = []
        async with contextlib.aclosing(replies):
            async for reply in replies:
                collected.append(reply)
                if len(collected) == MAX_REPLIES:
                    return {"replies": collected, "truncated": True}
        return {"replies": collected}


class LoopbackHosts:
    """Answers only requests addressed to a loopback name (``Host: 127.0.0.1:8082``,
    ``localhost``, ``[::1]``); any other gets 421 Misdirected Request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not _loopback(_header(scope, b"host")):
            error = MicroError("the dashboard answers loopback names only", id=CALLER)
            error.code = 421
            await send_error(send, error)
            return
        await self.app(scope, receive, send)


def _loopback(host: str) -> bool:
    try:
        name = urlsplit(f"//{host}").hostname or ""
    except ValueError:
        return False
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return ""


async def _call_request(request: Request) -> tuple[str, str, Any]:
    """The service, endpoint and request a call names, from a same-origin JSON body."""
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
        raise Forbidden("calls are taken from the dashboard's own pages only", id=CALLER)
    if request.headers.get("content-type", "").partition(";")[0].strip() != "application/json":
        raise BadRequest("send the call as application/json", id=CALLER)
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        if scheme != "Bearer":
            raise BadRequest("Authorization is 'Bearer <token>'", id=CALLER)
        _bearer_value(token)  # a ValueError, and so a 400, unless it can be a token
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_REQUEST:
        raise PayloadTooLarge(f"a call is at most {MAX_REQUEST} bytes", id=CALLER)
    body = await request.body()
    if len(body) > MAX_REQUEST:
        raise PayloadTooLarge(f"a call is at most {MAX_REQUEST} bytes", id=CALLER)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the call is not JSON: {exc}", id=CALLER) from None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(key), str) and data[key] for key in ("service", "endpoint")
    ):
        raise BadRequest('expected {"service": ..., "endpoint": ..., "request": ...}', id=CALLER)
    return data["service"], data["endpoint"], data.get("request")


def _bearer_value(token: str) -> str:
    """``Bearer <token>``, for a token that can be one (printable ASCII, no spaces)."""
    if not token or not token.isascii() or not token.isprintable() or " " in token:
        raise ValueError("a bearer token is printable ASCII without spaces")
    return f"Bearer {token}"


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def _html(content: str, *, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(content, status_code, headers=_HEADERS)


_HEADERS: Final = {
    # Pages run only their own script and are never framed by another site.
    "content-security-policy": "default-src 'self'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "cache-control": "no-store",
}
