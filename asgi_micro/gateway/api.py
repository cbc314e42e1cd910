"""The API gateway: callers that speak plain HTTP in front, the registry's services behind
(Go Micro's ``micro api``).

    asgi-micro api --port 8080                      # or: app.mount("/api", gateway(...))
    curl -X POST 127.0.0.1:8080/greeter/hello -d '{"name": "Ada"}'     # Greeter.Hello
    curl -X POST 127.0.0.1:8080/rpc \\
         -d '{"service": "greeter", "endpoint": "Greeter.Hello", "request": {"name": "Ada"}}'
    curl 127.0.0.1:8080/greeter/                    # greeter's plain route GET /
    curl 127.0.0.1:8080/openapi.json                # every service's paths under its name

``/<service><path>`` reaches the endpoint of ``service`` that the registry lists at ``path``
(an RPC endpoint or a plain route, path parameters included); failing that, Go Micro's rpc
handler rule: ``/<service>/<method>`` is ``<Service>.<Method>`` and ``/<service>/<handler>/
<method>`` is ``<Handler>.<Method>`` (``/greeter/hello`` is ``Greeter.Hello``). Only what the
registry lists is reachable: a path no endpoint serves is a 404 naming the service's paths, and
a service's internal routes (``/_micro/...``) are never exposed. ``POST /rpc`` takes Go Micro's
``{"service", "endpoint", "request"}``. The routes come from the registry as it is now
(``Catalogue``): a service appears with its first node and goes with its last.

Each request goes through the gateway's ``Client``: node selection, ejection of failing
nodes, retries on another node (idempotent endpoints and methods only, once something was
sent) and the deadline (the caller's ``Micro-Timeout`` capped by ``timeout``). Bodies pass
through as they are (any codec the service speaks; a stream's replies as they come), and so
do the service's errors, in Go Micro's shape with their status. Hop-by-hop headers are dropped
(and a reply's ``Date`` and ``Server``, which the server in front adds); ``Micro-*`` metadata
and the trace go on, ``Micro-From-Service`` names the gateway, and
``X-Forwarded-For/Host/Proto/Prefix`` say where the request came from.

At the edge: CORS (Starlette's ``CORSMiddleware``, for ``cors`` origins), a request size limit
(413), a rate limit per client (a token bucket per client address, or per account when the
caller's token verifies; 429 with ``Retry-After``) and, with auth on, the deployment's rules:
no valid token where a rule wants one is a 401, a token the rules refuse a 403, before any
service is called. The ``Authorization`` header goes on unchanged, so the service verifies the
token again, and only to nodes whose registration proves them the service's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple
from urllib.parse import unquote

import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp

from ..auth import Account, Auth
from ..auth.guard import Guard, jwks_through
from ..auth.rules import Access, Resource, decide, refuse
from ..client import CLIENT_ID, Client, ClientCall
from ..client.http import Response, StreamingResponse
from ..client.retry import RETRYABLE_STATUSES
from ..context import PROPAGATE_ALL, TIMEOUT_HEADER, Context, read_headers
from ..errors import (
    BadRequest,
    MicroError,
    NotFound,
    PayloadTooLarge,
    Timeout,
)
from ..limits import DEFAULT_MAX_MESSAGE_SIZE
from ..pipeline import compose
from ..plugins import Lifecycle
from ..registry import Endpoint, Registry
from ..responses import read_body, send_error, send_response
from ..types import Receive, Scope, Send
from .catalogue import Catalogue
from .openapi import combined
from .routes import GATEWAY, Rate, RateLimited, RateLimiter, Route, ServiceRoutes
from .websocket import WEBSOCKET_HEADERS, open_upstream, relay

__all__ = [
    "GATEWAY",
    "Gateway",
    "Rate",
    "RateLimited",
    "RateLimiter",
    "Route",
    "ServiceRoutes",
    "gateway",
]

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

logger = logging.getLogger(__name__)

HOP_BY_HOP: Final = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    )
)
"""Headers that belong to one connection (RFC 9110, section 7.6.1), never forwarded."""
_NOT_FORWARDED: Final = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"expect",
    b"authorization",  # forwarded from the context, as the caller sent it
    b"traceparent",
    b"tracestate",
    b"x-forwarded-for",
    b"x-forwarded-host",
    b"x-forwarded-proto",
    b"x-forwarded-prefix",
}
_JSON: Final = b"application/json"
_NDJSON: Final = b"application/x-ndjson"
_RESOLVED_MAX: Final = 1024
"""Requests' routes the gateway keeps (method, path and query); all are forgotten when it is
full, and whenever the services change."""
_FAILED_DOCUMENT_AGE: Final = 10.0
"""Seconds a service's document built from the registry (its own could not be fetched) is
kept before the gateway asks the service again."""


# -- the gateway --------------------------------------------------------------------------------


class _Caller(NamedTuple):
    """Who calls the gateway: the ``Authorization`` value and, with auth on, the account it
    proves, or why not and whether only for want of its key (read once per request)."""

    account: Account | None
    authorization: str | None
    reason: str = ""
    unknown_key: bool = False


class Gateway(Lifecycle):
    """The gateway's state and its ASGI app: the catalogue of endpoints, the client that calls
    them, the guard with auth on and the rate limiter. ``gateway()`` wraps it in CORS.

    Lifecycle: ``start``/``stop`` or ``async with`` (the app's lifespan does it; mounted in
    another app, whose lifespan does not reach it, it starts on the first request)."""

    def __init__(
        self,
        *,
        registry: Registry | None = None,
        client: Client | None = None,
        auth: Auth | None = None,
        auth_default: Literal["open", "deny"] = "open",
        rate: Rate | None = None,
        max_body: int = DEFAULT_MAX_MESSAGE_SIZE,
        timeout: float = 30.0,
        resync: float = 30.0,
        rules_refresh: float = 5.0,
    ) -> None:
        if registry is None and client is None:
            raise ValueError("a gateway needs a registry (or a client)")
        if max_body < 0:
            raise ValueError("max_body must be >= 0")
        self.guard = (
            Guard(auth, service=GATEWAY, on=True, default=auth_default, rules_refresh=rules_refresh)
            if auth is not None and (auth.enabled or auth_default == "deny")
            else None
        )
        self.client = client or Client(
            registry=registry,  # type: ignore[arg-type]  # one of the two is given
            caller=GATEWAY,
            timeout=timeout,
            trusts=self.guard.trusts if self.guard is not None else None,
        )
        if self.guard is not None:  # a rotation elsewhere is learnt from the services' JWKS
            self.guard.teacher = jwks_through(self.client.http)
        self._owns_client = client is None
        self.timeout = timeout
        self.max_body = max_body
        self.rate_limiter = RateLimiter(rate) if rate is not None else None
        self.rules_refresh = rules_refresh
        self.catalogue = Catalogue(
            registry or self.client.registry, on_change=self._endpoints_changed, resync=resync
        )
        self.routes: dict[str, ServiceRoutes] = {}
        self._resolved: dict[tuple[Any, ...], Route] = {}
        self._documents: dict[str, tuple[dict[str, Endpoint], dict[str, Any], float]] = {}
        self._document: dict[str, Any] | None = None
        self._started = False
        self._starting = asyncio.Lock()
        self._rules: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the rules (auth on) and the registry. Idempotent."""
        async with self._starting:
            if self._started:
                return
            if self.guard is not None:
                await self.guard.auth.start()
                await self.guard.load_rules()
                self._rules = asyncio.create_task(
                    self.guard.follow_rules(), name="api gateway rules"
                )
            await self.catalogue.start()
            self._started = True
            logger.info("API gateway: %d service(s); auth %s", len(self.routes), self._auth_state())

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        await self.catalogue.stop()
        if self._owns_client:
            await self.client.aclose()
        if self._rules is not None:
            self._rules.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rules
            self._rules = None
        if self.guard is not None:
            await self.guard.auth.stop()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        async with self:
            yield

    # -- ASGI ---------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return
        if not self._started:
            await self.start()
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        try:
            caller = self._caller(scope)
            self._limit(scope, caller.account)
            path = _local_path(scope)
            method = scope["method"]
            if path == "/rpc" and method == "POST":
                await self._rpc(scope, receive, send, caller)
            elif path == "/openapi.json" and method in ("GET", "HEAD"):
                document = orjson.dumps(await self.openapi(scope.get("root_path", "")))
                await send_response(send, 200, b"" if method == "HEAD" else document)
            else:
                route = self._route(scope, path)
                await self._check(caller, route)
                body = await self._body(scope, receive)
                await self._forward(scope, send, route, body, caller.authorization)
        except MicroError as exc:
            exc.id = exc.id or GATEWAY
            headers: list[tuple[bytes, bytes]] = []
            if isinstance(exc, RateLimited):
                headers.append((b"retry-after", str(exc.retry_after).encode()))
            await send_error(send, exc, headers=headers)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket endpoint's session, relayed to a node (see ``gateway.websocket``);
        refused before the handshake with ``4000 + status``, as a service refuses one."""
        if (await receive())["type"] != "websocket.connect":
            return
        try:
            caller = self._caller(scope)
            self._limit(scope, caller.account)
            route = self._route(scope, _local_path(scope))
            await self._check(caller, route)
            upstream = await self._open_websocket(scope, route, caller.authorization)
        except MicroError as exc:
            await send({"type": "websocket.close", "code": 4000 + exc.code})
            return
        await relay(upstream, receive, send)

    async def _open_websocket(
        self, scope: Scope, route: Route, authorization: str | None
    ) -> ClientConnection:
        """The node's socket for ``route``, on a node chosen as for a call; another node is
        tried when one cannot be reached."""
        incoming = read_headers(scope["headers"]) or Context()
        outgoing = incoming.onward(
            timeout=self.timeout, metadata={"from-service": GATEWAY}, propagate=(PROPAGATE_ALL,)
        )
        outgoing.authorization = authorization
        forwarded = [
            (name, value)
            for name, value in _forwarded_headers(scope, route.service, None)
            if name not in WEBSOCKET_HEADERS
        ]
        # The context's headers, but no deadline: it bounds the handshake, not the session.
        forwarded += [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in outgoing.headers()
            if name != TIMEOUT_HEADER
        ]
        origin = (_header(scope, b"origin") or b"").decode("latin-1") or None

        async def attempt(node: Any, budget: float | None) -> ClientConnection:
            return await open_upstream(
                node.address, route.target, forwarded, service=route.service, origin=origin,
                subprotocols=scope.get("subprotocols", ()), timeout=budget,
                max_size=self.max_body,
            )  # fmt: skip

        return await self.client.attempts(
            route.service,
            attempt,
            context=outgoing,
            idempotent=True,  # nothing is sent before the handshake
            retries=self.client.retries,
            endpoint=route.endpoint.name,
        )

    def _route(self, scope: Scope, path: str) -> Route:
        """The service a path names (its first segment) and its endpoint at the rest, read
        from the raw path so that the rest goes to the node as the caller spelt it; kept until
        the services change (those found, up to ``_RESOLVED_MAX`` requests' worth)."""
        method = scope.get("method", "WEBSOCKET")
        key = (
            method,
            path,
            scope.get("raw_path"),
            scope.get("root_path"),
            scope.get("query_string"),
        )
        route = self._resolved.get(key)
        if route is None:
            route = self._resolve(scope, method, path)
            if len(self._resolved) >= _RESOLVED_MAX:
                self._resolved.clear()
            self._resolved[key] = route
        return route

    def _resolve(self, scope: Scope, method: str, path: str) -> Route:
        raw: bytes = scope.get("raw_path") or path.encode("latin-1")
        root = scope.get("root_path", "").encode("latin-1")
        if root:
            raw = raw[len(root) :] if raw.startswith(root) else path.encode("latin-1")
        _, raw_name, raw_rest = [*raw.decode("latin-1").split("/", 2), "", ""][:3]
        name, rest = unquote(raw_name), unquote("/" + raw_rest)
        if "/../" in f"{rest}/" or "/./" in f"{rest}/":
            raise NotFound(f"no endpoint at {path}: dot segments are not resolved", id=GATEWAY)
        routes = self.routes.get(name)
        if routes is None:
            registry = self.catalogue.registry
            raise NotFound(
                f"no service named {name!r} in the registry "
                f"{registry.url or type(registry).__name__}; the services there: "
                f"{', '.join(sorted(self.routes)) or 'none'}",
                id=GATEWAY,
            )
        query = scope.get("query_string", b"").decode("latin-1")
        return routes.route(method, rest, query, "/" + raw_rest)

    # -- edge checks --------------------------------------------------------------------------

    def _caller(self, scope: Scope) -> _Caller:
        """The caller's ``Authorization`` value, and what it proves with auth on."""
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        if self.guard is None:
            return _Caller(None, authorization)
        account, reason, unknown_key = self.guard.caller(authorization)
        return _Caller(account, authorization, reason, unknown_key)

    def _limit(self, scope: Scope, account: Account | None) -> None:
        limiter = self.rate_limiter
        if limiter is None:
            return
        client = scope.get("client")
        key = (
            f"account:{account.id}" if account is not None else f"ip:{client[0] if client else ''}"
        )
        wait = limiter.take(key)
        if wait > 0:
            raise RateLimited(
                f"over {limiter.rate.burst} requests at a rate of "
                f"{limiter.rate.per_second:g} a second; try again in {wait:.1f} s",
                retry_after=max(1, math.ceil(wait)),
            )

    async def _check(self, caller: _Caller, route: Route) -> None:
        """What the service's guard would decide, decided here first (auth on). A token that
        did not verify for want of its key makes the gateway learn the keys from the service
        the call is for (a rotation the gateway has not read yet)."""
        guard = self.guard
        if guard is None or not guard.enforcing:
            return
        account, reason = caller.account, caller.reason
        if account is None and caller.unknown_key:
            account, reason = await guard.learn_and_verify(
                caller.authorization, ask=route.service, reason=reason
            )
        resource = Resource("service", route.service, route.endpoint.name)
        rule = decide(guard.rules, account, resource)
        if rule is None or rule.access != Access.GRANT:
            refuse(rule, account, resource, reason)

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit():
                    raise BadRequest("Content-Length is not a number", id=GATEWAY)
                if int(value) > self.max_body:
                    raise PayloadTooLarge(f"request body over {self.max_body} bytes", id=GATEWAY)
        try:
            return await read_body(receive, limit=self.max_body)
        except PayloadTooLarge as exc:
            exc.id = GATEWAY
            raise

    def _auth_state(self) -> str:
        if self.guard is None:
            return "off"
        return f"on ({len(self.guard.rules)} rule(s), default {self.guard.default})"

    # -- POST /rpc ----------------------------------------------------------------------------

    async def _rpc(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        caller: _Caller,
    ) -> None:
        """Go Micro's ``/rpc``: ``{"service", "endpoint", "request"}`` (``method`` for
        ``endpoint`` too), ``request`` an object or JSON text; the reply as the service sends
        it."""
        body = await self._body(scope, receive)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"/rpc takes a JSON object: {exc}", id=GATEWAY) from None
        if not isinstance(data, dict):
            raise BadRequest('/rpc takes {"service", "endpoint", "request"}', id=GATEWAY)
        service, endpoint = data.get("service"), data.get("endpoint") or data.get("method")
        if not isinstance(service, str) or not isinstance(endpoint, str):
            raise BadRequest("/rpc needs 'service' and 'endpoint' as strings", id=GATEWAY)
        routes = self.routes.get(service)
        if routes is None:
            raise NotFound(f"no service named {service!r} in the registry", id=GATEWAY)
        route = routes.by_endpoint(endpoint)
        await self._check(caller, route)
        request = data.get("request")
        payload = request.encode() if isinstance(request, str) else orjson.dumps(request or {})
        streams = route.endpoint.metadata.get("stream") == "server"
        accept = _header(scope, b"accept") or b""
        if not streams:
            accept = _JSON
        elif b"text/event-stream" not in accept:
            accept = _NDJSON
        headers = {b"content-type": _JSON, b"accept": accept}
        await self._forward(scope, send, route, payload, caller.authorization, replace=headers)

    # -- forwarding ---------------------------------------------------------------------------

    async def _forward(
        self,
        scope: Scope,
        send: Send,
        route: Route,
        body: bytes,
        authorization: str | None,
        *,
        replace: Mapping[bytes, bytes] | None = None,
    ) -> None:
        """Send the request to a node of the route's service (retried as the client retries)
        and stream the reply back."""
        incoming = read_headers(scope["headers"]) or Context()
        outgoing = incoming.onward(
            timeout=self.timeout, metadata={"from-service": GATEWAY}, propagate=(PROPAGATE_ALL,)
        )
        outgoing.authorization = authorization
        forwarded = _forwarded_headers(scope, route.service, replace)
        kind = "server" if route.endpoint.metadata.get("stream") == "server" else "unary"
        if route.endpoint.metadata.get("kind") != "rpc":
            kind = "http"
        call = ClientCall(
            route.service, route.endpoint.name, "http", outgoing, request=body, kind=kind
        )
        client = self.client
        transport = client.transport
        idempotent = route.idempotent

        async def attempt(node: Any, budget: float | None) -> Response | StreamingResponse:
            headers = [*forwarded]
            for name, value in call.context.headers():
                if name != TIMEOUT_HEADER:
                    headers.append((name.encode("latin-1"), value.encode("latin-1")))
            remaining = call.context.remaining()
            if remaining is not None:
                millis = max(1, int((budget if budget is not None else remaining) * 1000))
                headers.append((b"micro-timeout", str(millis).encode()))
            if route.method == "HEAD" or kind == "unary":  # one reply: read it whole
                answered = await transport.request(
                    node.host, node.port, route.method, route.target, headers=headers,
                    body=body, timeout=budget,
                )  # fmt: skip
                if idempotent and answered.status in RETRYABLE_STATUSES:
                    raise MicroError.from_body(answered.status, answered.body, id=route.service)
                return answered
            opening = transport.open_stream(
                node.host, node.port, route.method, route.target, headers=headers, body=body,
                timeout=budget if kind != "http" else remaining,
            )  # fmt: skip
            if kind != "http" or budget is None or budget == remaining:
                response = await opening
            else:
                # A plain route's reply may stream: ``budget`` bounds the wait for its head, the
                # deadline its body.
                try:
                    async with asyncio.timeout(budget):
                        response = await opening
                except TimeoutError:
                    raise Timeout(f"{route.service} did not answer in time", id=CLIENT_ID) from None
            if idempotent and response.status in RETRYABLE_STATUSES:
                # Another node may answer: the retry loop decides, on the error itself.
                try:
                    answer = b"".join([chunk async for chunk in response])
                finally:
                    await response.aclose()
                raise MicroError.from_body(response.status, answer, id=route.service)
            return response

        async def deliver(call: ClientCall) -> Response | StreamingResponse:
            return await client.attempts(
                route.service,
                attempt,
                context=call.context,
                idempotent=idempotent,
                retries=client.retries,
                endpoint=route.endpoint.name,
            )

        if client.wrappers:
            response: Response | StreamingResponse = await compose(client.wrappers, deliver)(call)
        else:
            response = await deliver(call)
        if isinstance(response, Response):  # a whole reply, or the head of a HEAD
            headers = _end_to_end(response.headers)
            await send(
                {"type": "http.response.start", "status": response.status, "headers": headers}
            )
            body = b"" if route.method == "HEAD" else response.body
            await send({"type": "http.response.body", "body": body})
            return
        try:
            await _relay(send, response)
        finally:
            await response.aclose()

    # -- the combined OpenAPI document --------------------------------------------------------

    async def _endpoints_changed(self) -> None:
        self.routes = {
            name: ServiceRoutes(name, endpoints)
            for name, endpoints in self.catalogue.endpoints.items()
        }
        self._resolved = {}
        self._document = None

    async def openapi(self, root_path: str = "") -> dict[str, Any]:
        """Every service's endpoints under ``/<service>``, tagged with its name: from the
        service's own ``/openapi.json`` where it serves one, else from the registry's schemas;
        kept until the services change."""
        document = self._document
        now = time.monotonic()
        stale = any(expires and now >= expires for _, _, expires in self._documents.values())
        if document is None or stale:
            names = sorted(self.routes)
            own = await asyncio.gather(*(self._service_document(name) for name in names))
            document = combined(
                {
                    name: (self.routes[name].endpoints, doc)
                    for name, doc in zip(names, own, strict=True)
                }
            )
            self._document = document
        if root_path:
            document = {**document, "servers": [{"url": root_path}]}
        return document

    async def _service_document(self, name: str) -> dict[str, Any]:
        """What the service documents of its own endpoints (its ``/openapi.json``), cached for
        as long as its endpoints stay the same."""
        endpoints = self.routes[name].endpoints
        cached = self._documents.get(name)
        fresh = cached is not None and (not cached[2] or time.monotonic() < cached[2])
        if cached is not None and fresh and cached[0] == endpoints:
            return cached[1]
        own: dict[str, Any] | None = None
        try:
            async with self.client.http(timeout=5.0) as http:
                response = await http.get(f"http://{name}/openapi.json")
            if response.status_code == 200:
                own = response.json()
        except Exception as exc:  # no document: the registry's schemas do
            logger.info("%s serves no OpenAPI document (%s); using the registry's", name, exc)
        document = own if isinstance(own, dict) else {}
        expires = 0.0 if own is not None else time.monotonic() + _FAILED_DOCUMENT_AGE
        self._documents[name] = (endpoints, document, expires)
        return document


# -- headers and relaying ---------------------------------------------------------------------


def _header(scope: Scope, wanted: bytes) -> bytes | None:
    for name, value in scope["headers"]:
        if name == wanted:
            found: bytes = value
            return found
    return None


def _local_path(scope: Scope) -> str:
    """The request's path below the gateway's mount point."""
    path: str = scope["path"]
    root = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _forwarded_headers(
    scope: Scope, service: str, replace: Mapping[bytes, bytes] | None
) -> list[tuple[bytes, bytes]]:
    """The caller's headers a node is sent: not those of the connection, nor the framing, nor
    the context's (sent from the outgoing context); ``replace`` instead of its own; and where
    the request came from."""
    headers = scope["headers"]
    dropped = _NOT_FORWARDED
    for name, value in headers:
        if name == b"connection":  # it may name more hop-by-hop headers
            dropped = dropped | {token.strip().lower() for token in value.split(b",")}
    forwarded = [
        (name, value)
        for name, value in headers
        if name not in dropped
        and not name.startswith(b"micro-")
        and (replace is None or name not in replace)
    ]
    if replace:
        forwarded.extend(replace.items())
    client = scope.get("client")
    peer = client[0].encode() if client else b"unknown"
    earlier = _header(scope, b"x-forwarded-for")
    forwarded.append((b"x-forwarded-for", earlier + b", " + peer if earlier else peer))
    forwarded.append((b"x-forwarded-proto", scope.get("scheme", "http").encode()))
    host = _header(scope, b"host")
    if host:
        forwarded.append((b"x-forwarded-host", host))
    prefix = f"{scope.get('root_path', '')}/{service}".encode("latin-1")
    forwarded.append((b"x-forwarded-prefix", prefix))
    return forwarded


_NOT_RELAYED: Final = HOP_BY_HOP | {b"date", b"server"}
"""Headers of a node's reply the caller is not sent: those of the connection, and ``Date``
and ``Server``, which the server in front of the gateway adds to every response (uvicorn and
Hypercorn do); relayed, they would come twice."""


def _end_to_end(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(name, value) for name, value in headers if name not in _NOT_RELAYED]


async def _relay(send: Send, response: StreamingResponse) -> None:
    """The node's reply as it comes: its status and end-to-end headers, then its body, the
    last chunk marked as such when the length is known (one message fewer for small replies)."""
    headers = _end_to_end(response.headers)
    length: int | None = None
    for name, value in headers:
        if name == b"content-length" and value.isdigit():
            length = int(value)
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    sent = 0
    try:
        async for chunk in response:
            sent += len(chunk)
            more = length is None or sent < length
            await send({"type": "http.response.body", "body": chunk, "more_body": more})
            if not more:
                return
    except MicroError as exc:
        # The head is sent: all the caller can be told is that the body ends short (the
        # server closes the connection of a response left unfinished).
        logger.info("%s: reply cut short: %s", response, exc)
        return
    await send({"type": "http.response.body", "body": b""})


# -- the app ------------------------------------------------------------------------------------


def gateway(
    *,
    registry: Registry | None = None,
    client: Client | None = None,
    auth: Auth | None = None,
    auth_default: Literal["open", "deny"] = "open",
    cors: Sequence[str] = (),
    rate: Rate | str | None = None,
    max_body: int = DEFAULT_MAX_MESSAGE_SIZE,
    timeout: float = 30.0,
) -> Starlette:
    """The gateway as a Starlette app, to serve (``asgi-micro api``) or mount in another app
    (``app.mount("/api", gateway(registry=service.registry))``).

    ``client`` (default: a client of the gateway's own on ``registry``) makes the calls;
    ``auth`` turns auth on at the edge (``auth_default="deny"``: no rule, no call); ``cors``
    names the origins browsers may call from (``["*"]`` for any); ``rate`` (``"10/s"``) is the
    rate limit per client; ``max_body`` the largest request body; ``timeout`` the most a call
    may take, retries included. The ``Gateway`` is ``app.state.gateway``."""
    api = Gateway(
        registry=registry,
        client=client,
        auth=auth,
        auth_default=auth_default,
        rate=Rate.parse(rate) if isinstance(rate, str) else rate,
        max_body=max_body,
        timeout=timeout,
    )
    middleware = []
    if cors:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(cors),
                allow_methods=["*"],
                allow_headers=["*"],
                expose_headers=["Retry-After"],
                max_age=600,
            )
        )
    app = _Edge(middleware=middleware, lifespan=api.lifespan)
    app.state.gateway = api
    return app


class _Edge(Starlette):
    """A Starlette app whose whole routing is the gateway: the user's middleware (CORS) around
    it and nothing else in the way. Starlette's router would add a route match, a mount's scope
    copy and an exception wrapper around every ``send`` to each request, for a gateway that
    answers every path and its own errors (anything else reaches the server, which answers
    500 and logs it). The lifespan is still Starlette's (``router.lifespan_context``)."""

    def build_middleware_stack(self) -> ASGIApp:
        gateway: Gateway = self.state.gateway
        lifespan = self.router.lifespan

        async def edge(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "lifespan":
                await lifespan(scope, receive, send)
            else:
                await gateway(scope, receive, send)

        app: ASGIApp = edge
        for cls, args, kwargs in reversed(self.user_middleware):
            app = cls(app, *args, **kwargs)
        return app
