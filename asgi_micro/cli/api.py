"""``asgi-micro api``: the API gateway (``asgi_micro.gateway.api``) on uvicorn.

    asgi-micro api --port 8080 --cors-origin https://app.example --rate 20/s

``/<service>/<path>`` reaches the service's endpoints by path (``/greeter/hello`` is
``Greeter.Hello``), ``POST /rpc`` takes ``{"service", "endpoint", "request"}`` and
``/openapi.json`` describes every service behind it. With auth on (``--auth``/``MICRO_AUTH``,
or ``--auth-default deny``) the rules in the store of ``--store`` decide at the edge, and the
caller's token goes on to the service, which checks it again.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Annotated, Any

import typer

from ..auth import DEFAULT_URL as DEFAULT_AUTH
from ..auth import from_url as auth_from_url
from ..heap import freeze_startup_heap
from ..limits import DEFAULT_MAX_MESSAGE_SIZE
from ..plugins import MissingDependency, Parts
from ..registry import from_url as registry_from_url
from ..settings import Settings
from ..store import DEFAULT_URL as DEFAULT_STORE
from ..store import from_url as store_from_url
from .common import DEFAULT_URL, AuthDefault, RegistryOption, errors
from .store import StoreOption

__all__ = ["api"]


def api(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    registry: RegistryOption = DEFAULT_URL,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            "--cors-origin", help="An origin browsers may call from (repeat it; '*' for any)."
        ),
    ] = None,
    rate: Annotated[
        str | None,
        typer.Option(
            metavar="N/s", help="Requests per client (address, or account with auth on): N/s, N/m."
        ),
    ] = None,
    max_body: Annotated[
        int, typer.Option(min=0, metavar="BYTES", help="The largest request body (413 beyond).")
    ] = DEFAULT_MAX_MESSAGE_SIZE,
    auth: Annotated[
        str,
        typer.Option(
            "--auth",
            envvar="MICRO_AUTH",
            help="Auth URL (jwt://...): the rules decide at the edge. Unset: off.",
        ),
    ] = "",
    auth_default: Annotated[
        AuthDefault,
        typer.Option(envvar="MICRO_AUTH_DEFAULT", help="deny: with no rule, no call (auth on)."),
    ] = AuthDefault.open,
    store: StoreOption = DEFAULT_STORE,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds a call may take, retries included.")
    ] = 30.0,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    """Serve the registry's services over HTTP by name: the API gateway."""
    import uvicorn

    from ..gateway.api import GATEWAY, Rate, gateway
    from .run import log_config

    try:
        limit = Rate.parse(rate) if rate else None
    except ValueError as exc:
        errors.print(f"asgi-micro api: --rate: {exc}")
        raise typer.Exit(2) from None
    auth_on = bool(auth) or auth_default == AuthDefault.deny

    backing = store_from_url(store) if auth_on else None
    try:
        app = gateway(
            registry=registry_from_url(registry),
            auth=auth_from_url(auth or DEFAULT_AUTH, parts=Parts(service=GATEWAY, store=backing))
            if auth_on
            else None,
            auth_default=auth_default.value,
            cors=cors_origin or (),
            rate=limit,
            max_body=max_body,
            timeout=timeout,
        )
    except (ValueError, MissingDependency) as exc:
        errors.print(str(exc))
        raise typer.Exit(2) from None
    gateway_lifespan = app.router.lifespan_context

    os.environ.setdefault("MICRO_GC_FREEZE", "true")  # the process is ours: asgi_micro.heap
    freeze = Settings().gc_freeze

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async with gateway_lifespan(app):
            if freeze:
                freeze_startup_heap()
            yield
        if backing is not None:
            await backing.stop()

    app.router.lifespan_context = lifespan
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="asgi_micro.server:MicroHttpProtocol",
        lifespan="on",
        log_level=log_level,
        log_config=log_config(log_level),
    )
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run()
