"""The MCP gateway: every RPC endpoint in the registry a tool for AI agents.

    asgi-micro mcp                                  # stdio, for an agent that starts it
    asgi-micro mcp --transport http --port 8765     # Streamable HTTP at /mcp

A tool is an RPC endpoint of a service with live nodes (a unary one, or one that streams its
replies, which the tool returns as one list): its input schema is the endpoint's request schema,
its output schema the reply's (when the reply is an object), its description the handler's
docstring. It is named ``<service>__<Router>_<Method>`` (``greeter__Greeter_Hello``), every
character outside ``[A-Za-z0-9_-]`` turned into ``_`` and at most 64 characters long, which is
what the function-calling APIs of language models accept; the name only has to be unique, since
the gateway looks every call up in its own table. Tools appear and disappear as services come
and go (``asgi_micro.gateway.catalogue``), and the agent is told: ``notifications/tools/
list_changed`` on a handshake-era session, a ``subscriptions/listen`` event on a 2026-07-28 one.

A call goes through the resilient client (node selection, retries on another node, the
deadline), and what the service raises comes back as a tool result with ``isError`` and the
error in Go Micro's shape, which the agent can read and act on.

With auth on (an auth backend given, as for a service: ``MICRO_AUTH``), the agent's bearer token
(Streamable HTTP: its ``Authorization`` header; stdio: ``--token``) decides: a tool is listed,
and called, only when the deployment's rules (read from the store, as a service's guard reads
them) grant its account the endpoint, and the call carries the token, to nodes whose
registration verifies only, so that the service checks it again. With auth off every tool is
listed and no token is passed on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import mcp_types as types
import orjson
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp.server.session import ServerSession
from mcp.server.stdio import stdio_server
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ToolsListChanged
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from starlette.applications import Starlette

from ..__about__ import __version__
from ..auth import Account, Auth
from ..auth.guard import Guard, jwks_through
from ..auth.rules import Access, Resource, decide, refuse
from ..client import Client
from ..errors import MicroError
from ..plugins import Lifecycle
from ..registry import Endpoint, Registry
from .acting import acting_for, send_authorization
from .catalogue import Catalogue, Endpoints

__all__ = ["GATEWAY", "MCPGateway", "ToolRoute", "tool_name", "tools_of"]

logger = logging.getLogger(__name__)

GATEWAY: Final = "asgi-micro-mcp"
"""The name the gateway calls services under, and its MCP server name."""
TOOL_NAME_LENGTH: Final = 64
MAX_STREAM_REPLIES: Final = 1000
"""Replies a streaming tool returns at most: an agent reads the result whole."""
_LEGACY_SESSIONS: Final = 1024
Context = ServerRequestContext[Any, Any]
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True, slots=True)
class ToolRoute:
    """Where a tool's calls go: ``endpoint`` of ``service``, and the tool as listed."""

    service: str
    endpoint: str
    streams: bool
    tool: types.Tool


def tool_name(service: str, endpoint: str) -> str:
    """``greeter__Greeter_Hello``: safe for every model's function-calling API; a name longer
    than 64 characters keeps its start and a digest of the whole."""
    full = f"{service}__{endpoint}"
    name = _UNSAFE.sub("_", full)
    if len(name) > TOOL_NAME_LENGTH:
        digest = hashlib.sha256(full.encode()).hexdigest()[:8]
        name = f"{name[: TOOL_NAME_LENGTH - 9]}_{digest}"
    return name


def tools_of(endpoints: Endpoints) -> dict[str, ToolRoute]:
    """The tools of the RPC endpoints in ``endpoints``, by tool name. Endpoints that take a
    stream of requests, or a request that is not an object, make no tool."""
    tools: dict[str, ToolRoute] = {}
    for service in sorted(endpoints):
        for endpoint in sorted(endpoints[service].values(), key=lambda e: e.name):
            route = _route(service, endpoint)
            if route is None:
                continue
            if route.tool.name in tools:
                logger.warning("%s %s: tool name %s taken", service, endpoint.name, route.tool.name)
                continue
            tools[route.tool.name] = route
    return tools


def _route(service: str, endpoint: Endpoint) -> ToolRoute | None:
    metadata = endpoint.metadata
    stream = metadata.get("stream")
    if metadata.get("kind") != "rpc" or stream in ("client", "bidi"):
        return None
    request = endpoint.request or {"type": "object", "properties": {}}
    if request.get("type") != "object":
        return None
    response = endpoint.response
    output = response if stream is None and response and response.get("type") == "object" else None
    tool = types.Tool(
        name=tool_name(service, endpoint.name),
        title=f"{service} {endpoint.name}",
        description=metadata.get("description") or f"{endpoint.name} of the {service} service.",
        input_schema=request,
        output_schema=output,
        annotations=types.ToolAnnotations(
            idempotent_hint=metadata.get("idempotent") == "true", open_world_hint=False
        ),
    )
    return ToolRoute(service, endpoint.name, stream == "server", tool)


class MCPGateway(Lifecycle):
    """An MCP server whose tools are the registry's RPC endpoints.

    ``auth`` turns auth on (rules decide, for ``auth_default`` as a service's guard does);
    ``token`` is the agent's on stdio. ``timeout`` bounds each call, retries included.
    Lifecycle: ``start``/``stop`` or ``async with``; then ``serve_stdio()`` or ``http_app()``.
    """

    def __init__(
        self,
        *,
        registry: Registry,
        auth: Auth | None = None,
        auth_default: Literal["open", "deny"] = "open",
        token: str | None = None,
        timeout: float = 30.0,
        resync: float = 30.0,
        rules_refresh: float = 5.0,
    ) -> None:
        self.guard = (
            Guard(auth, service=GATEWAY, on=True, default=auth_default, rules_refresh=rules_refresh)
            if auth is not None and auth.enabled
            else None
        )
        self.token = token
        self.rules_refresh = rules_refresh
        self.catalogue = Catalogue(registry, on_change=self._tools_changed, resync=resync)
        self.client = Client(
            registry=registry,
            caller=GATEWAY,
            timeout=timeout,
            wrappers=[send_authorization],
            trusts=self.guard.trusts if self.guard is not None else None,
        )
        if self.guard is not None:  # a rotation elsewhere is learnt from the services' JWKS
            self.guard.teacher = jwks_through(self.client.http)
        self.tools: dict[str, ToolRoute] = {}
        self._bus = InMemorySubscriptionBus()
        self._legacy: dict[str, ServerSession] = {}
        self._rules: asyncio.Task[None] | None = None
        self.server: Server[Any] = Server(
            GATEWAY,
            version=__version__,
            instructions="Each tool calls an endpoint of a micro service found in the registry.",
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_subscriptions_listen=ListenHandler(self._bus),
        )

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self.guard is not None and self._rules is None:
            await self.guard.auth.start()
            await self.guard.load_rules()
            self._rules = asyncio.create_task(self.guard.follow_rules(), name="mcp gateway rules")
        elif self.guard is None and self.token is not None:
            logger.warning("auth is off: the token given is not passed on to services")
        await self.catalogue.start()

    async def stop(self) -> None:
        await self.catalogue.stop()
        await self.client.aclose()
        if self.guard is not None and self._rules is not None:
            self._rules.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rules
            self._rules = None
            await self.guard.auth.stop()

    def initialization_options(self) -> InitializationOptions:
        return self.server.create_initialization_options(NotificationOptions(tools_changed=True))

    async def serve_stdio(self) -> None:
        """Serve one agent on standard input and output until it closes them."""
        async with stdio_server() as (read, write):
            await self.server.run(read, write, self.initialization_options())

    def http_app(self, *, host: str = "127.0.0.1") -> Starlette:
        """The Streamable HTTP app, at ``/mcp``; served on loopback it refuses other
        ``Host`` and ``Origin`` headers (DNS rebinding)."""
        return self.server.streamable_http_app(host=host)

    # -- MCP handlers -------------------------------------------------------------------------

    async def _list_tools(
        self, ctx: Context, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            self._remember(ctx)
        any_service = min((route.service for route in self.tools.values()), default=None)
        account, _ = await self._account(ctx, ask=any_service)
        allowed = [route.tool for route in self.tools.values() if self._allows(account, route)]
        return types.ListToolsResult(tools=allowed)

    async def _call_tool(
        self, ctx: Context, params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        route = self.tools.get(params.name)
        if route is None:
            raise MCPError(code=types.INVALID_PARAMS, message=f"unknown tool: {params.name}")
        account, reason = await self._account(ctx, ask=route.service)
        try:
            if not self._allows(account, route):
                self._refuse(account, route, reason)
            with acting_for(self._authorization(ctx) if self.guard is not None else None):
                reply = await self._invoke(route, params.arguments)
        except MicroError as exc:
            return types.CallToolResult(
                content=[types.TextContent(text=exc.to_json().decode())], is_error=True
            )
        text = orjson.dumps(reply).decode()
        structured = reply if route.tool.output_schema is not None else None
        if route.streams:
            structured = {"replies": reply}
        return types.CallToolResult(
            content=[types.TextContent(text=text)], structured_content=structured
        )

    async def _invoke(self, route: ToolRoute, arguments: Mapping[str, Any] | None) -> Any:
        request = dict(arguments or {})
        if not route.streams:
            return await self.client.call(route.service, route.endpoint, request)
        replies = []
        stream = self.client.stream(route.service, route.endpoint, request)
        async with contextlib.aclosing(stream):
            async for reply in stream:
                replies.append(reply)
                if len(replies) >= MAX_STREAM_REPLIES:
                    break
        return replies

    # -- auth ---------------------------------------------------------------------------------

    def _authorization(self, ctx: Context) -> str | None:
        """The agent's ``Authorization``: its HTTP request's header, or on stdio the token the
        gateway was started with."""
        if ctx.request is not None:  # a Starlette request: Streamable HTTP
            value: str | None = ctx.request.headers.get("authorization")
            return value
        return f"Bearer {self.token}" if self.token else None

    async def _account(self, ctx: Context, *, ask: str | None) -> tuple[Account | None, str]:
        """The account the agent's token proves (``None`` with auth off), or why none; a
        token signed by a key the gateway lacks makes it learn the keys from ``ask``'s JWKS."""
        if self.guard is None:
            return None, ""
        return await self.guard.identify(self._authorization(ctx), ask=ask)

    def _allows(self, account: Account | None, route: ToolRoute) -> bool:
        """Whether the rules let ``account`` call ``route``, as the service's guard decides
        (with no rules, and by default open, everyone may)."""
        guard = self.guard
        if guard is None or not guard.enforcing:
            return True
        rule = decide(guard.rules, account, Resource("service", route.service, route.endpoint))
        return rule is not None and rule.access == Access.GRANT

    def _refuse(self, account: Account | None, route: ToolRoute, reason: str) -> None:
        """Raise what the service would answer the agent (401 or 403)."""
        assert self.guard is not None
        resource = Resource("service", route.service, route.endpoint)
        refuse(decide(self.guard.rules, account, resource), account, resource, reason)

    # -- tools changing -----------------------------------------------------------------------

    async def _tools_changed(self) -> None:
        tools = tools_of(self.catalogue.endpoints)
        if tools == self.tools:
            return
        added = tools.keys() - self.tools.keys()
        removed = self.tools.keys() - tools.keys()
        self.tools = tools
        logger.info(
            "%d tool(s); added %s; removed %s",
            len(tools),
            ", ".join(sorted(added)) or "none",
            ", ".join(sorted(removed)) or "none",
        )
        await self._bus.publish(ToolsListChanged())
        for session in list(self._legacy.values()):
            await session.send_tool_list_changed()  # best effort: a closed session drops it

    def _remember(self, ctx: Context) -> None:
        """Keep a handshake-era session that listed the tools, to tell it when they change
        (a 2026-07-28 session listens for that on its own)."""
        request = ctx.request
        key = request.headers.get("mcp-session-id", "") if request is not None else "stdio"
        if key not in self._legacy and len(self._legacy) >= _LEGACY_SESSIONS:
            self._legacy.pop(next(iter(self._legacy)))
        self._legacy[key] = ctx.session
