"""``asgi-micro mcp``: the registry's RPC endpoints as tools for AI agents (the MCP gateway,
``asgi_micro.gateway.mcp``; the ``mcp`` extra).

    asgi-micro mcp                                        # stdio: an agent starts it
    asgi-micro mcp --transport http --port 8765           # Streamable HTTP at /mcp

With auth on (``--auth``/``MICRO_AUTH``, or ``--auth-default deny``), the rules in the store of
``--store`` decide which tools an agent sees and may call, from its token: the
``Authorization`` header over HTTP, ``--token`` (better: ``MICRO_MCP_TOKEN``) on stdio.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from ..auth import DEFAULT_URL as DEFAULT_AUTH
from ..auth import from_url as auth_from_url
from ..plugins import MissingDependency, Parts
from ..registry import from_url as registry_from_url
from ..store import DEFAULT_URL as DEFAULT_STORE
from ..store import from_url as store_from_url
from .common import DEFAULT_URL, AuthDefault, RegistryOption, errors
from .store import StoreOption

if TYPE_CHECKING:
    from ..gateway.mcp import MCPGateway

__all__ = ["MCPTransport", "mcp"]


class MCPTransport(enum.StrEnum):
    stdio = "stdio"
    http = "http"


def mcp(
    transport: Annotated[
        MCPTransport, typer.Option(help="stdio (the agent starts the gateway) or Streamable HTTP.")
    ] = MCPTransport.stdio,
    host: Annotated[str, typer.Option(help="Interface to bind (http).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (http); the endpoint is /mcp.")] = 8765,
    registry: RegistryOption = DEFAULT_URL,
    auth: Annotated[
        str,
        typer.Option(
            "--auth",
            envvar="MICRO_AUTH",
            help="Auth URL (jwt://...): tools by the rules the agent's token meets. Unset: off.",
        ),
    ] = "",
    auth_default: Annotated[
        AuthDefault,
        typer.Option(
            envvar="MICRO_AUTH_DEFAULT", help="deny: with no rule, no tool (and auth on)."
        ),
    ] = AuthDefault.open,
    store: StoreOption = DEFAULT_STORE,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="MICRO_MCP_TOKEN",
            metavar="TOKEN",
            show_default=False,
            help="The agent's bearer token on stdio (over HTTP: its Authorization header).",
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds a tool call may take.")] = 30.0,
    log_level: Annotated[str, typer.Option(help="Log level (to standard error).")] = "warning",
) -> None:
    """Serve every RPC endpoint in the registry as an MCP tool."""
    try:
        from ..gateway.mcp import GATEWAY, MCPGateway
    except ImportError as exc:
        if not (exc.name or "").startswith("mcp"):
            raise
        errors.print("asgi-micro mcp needs the MCP SDK: pip install 'asgi-micro[mcp]'")
        raise typer.Exit(2) from None
    logging.basicConfig(
        stream=sys.stderr,
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    auth_on = bool(auth) or auth_default == AuthDefault.deny

    async def serve() -> None:
        backing = store_from_url(store) if auth_on else None
        parts = Parts(service=GATEWAY, store=backing)
        gateway = MCPGateway(
            registry=registry_from_url(registry),
            auth=auth_from_url(auth or DEFAULT_AUTH, parts=parts) if auth_on else None,
            auth_default=auth_default.value,
            token=token,
            timeout=timeout,
        )
        try:
            async with gateway:
                if transport == MCPTransport.stdio:
                    await gateway.serve_stdio()
                else:
                    await _serve_http(gateway, host, port, log_level)
        finally:
            if backing is not None:
                await backing.stop()

    try:
        asyncio.run(serve())
    except (ValueError, MissingDependency) as exc:
        errors.print(str(exc))
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        pass


async def _serve_http(gateway: MCPGateway, host: str, port: int, log_level: str) -> None:
    import uvicorn

    from .run import log_config

    config = uvicorn.Config(
        gateway.http_app(host=host),
        host=host,
        port=port,
        lifespan="on",
        log_level=log_level,
        log_config=log_config(log_level),
    )
    await uvicorn.Server(config).serve()
