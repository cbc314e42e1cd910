"""``asgi-micro web``: serve the dashboard (``asgi_micro.web``) of the registry.

    asgi-micro web                                  # http://127.0.0.1:8082
    asgi-micro web --registry etcd://10.0.0.5:2379 --port 9000

Its call form calls services with the token typed into the page, else with ``--token``
(``MICRO_WEB_TOKEN``), else as an anonymous caller; with ``--auth`` a token goes only to nodes
whose registration verifies under that key ring. It binds loopback unless told otherwise,
since whoever reaches it may call every service the registry lists, and on loopback it answers
only requests addressed to a loopback name (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

import typer

from ..plugins import MissingDependency
from ..registry import from_url
from .common import DEFAULT_URL, RegistryOption, errors

__all__ = ["web"]

SHUTDOWN_GRACE = 2
"""Seconds open pages get at shutdown: their event streams never end by themselves."""


def web(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8082,
    registry: RegistryOption = DEFAULT_URL,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds a call may take.")] = 10.0,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="MICRO_WEB_TOKEN",
            metavar="TOKEN",
            show_default=False,
            help="The bearer token of calls whose page gave none (- reads it from stdin).",
        ),
    ] = None,
    auth: Annotated[
        str,
        typer.Option(
            "--auth",
            envvar="MICRO_AUTH",
            help="Auth URL (jwt://...): tokens go only to nodes whose registration verifies "
            "under its key ring. Unset: to any node.",
        ),
    ] = "",
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
) -> None:
    """Serve a web dashboard: services, nodes, endpoints and topics, live; call endpoints."""
    import uvicorn

    from ..web import Dashboard
    from .auth import read_secret, registration_check
    from .run import log_config

    try:
        dashboard = Dashboard(
            from_url(registry),
            timeout=timeout,
            loopback_only=_is_loopback(host),
            token=None if token is None else read_secret(token, "token"),
            trusts=registration_check(auth) if auth else None,
        )
    except (ValueError, MissingDependency) as exc:
        errors.print(str(exc))
        raise typer.Exit(2) from None
    config = uvicorn.Config(
        dashboard.app,
        host=host,
        port=port,
        lifespan="on",
        log_level=log_level,
        log_config=log_config(log_level),
        timeout_graceful_shutdown=SHUTDOWN_GRACE,
    )
    shown = f"[{host}]" if ":" in host else host
    errors.print(f"asgi-micro web: the dashboard at http://{shown}:{port}/")
    uvicorn.Server(config).run()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
