"""``asgi-micro run APP``: serve an app with uvicorn; its service registers itself.

It serves with ``asgi_micro.server.MicroHttpProtocol`` (uvicorn's httptools protocol with the
limits of ``asgi_micro.limits``), and puts the limits it was given in the environment as the
``MICRO_*`` settings, where the app's service and the protocol (in a ``--reload`` worker too)
find them: one ``--max-message-size`` for bodies, WebSocket messages and gRPC messages.
"""

from __future__ import annotations

import copy
import os
from typing import Annotated, Any

import typer

from ..limits import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_HEADER_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
)
from .apps import check_importable, locate_app
from .common import errors

__all__ = ["log_config", "run"]

_PROTOCOL = "asgi_micro.server:MicroHttpProtocol"


def run(
    target: Annotated[
        str, typer.Argument(metavar="APP", help="module:attr, or a file path (attr 'app').")
    ],
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    reload: Annotated[bool, typer.Option(help="Restart when code changes (development).")] = False,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    max_message_size: Annotated[
        int,
        typer.Option(
            envvar="MICRO_MAX_MESSAGE_SIZE",
            min=1,
            help="Largest request body, WebSocket message and gRPC message, in bytes.",
        ),
    ] = DEFAULT_MAX_MESSAGE_SIZE,
    max_header_size: Annotated[
        int,
        typer.Option(
            envvar="MICRO_MAX_HEADER_SIZE", min=1, help="Largest request header block, in bytes."
        ),
    ] = DEFAULT_MAX_HEADER_SIZE,
    header_timeout: Annotated[
        float,
        typer.Option(
            envvar="MICRO_HEADER_TIMEOUT",
            min=0.1,
            help="Seconds a client has to send a request's headers.",
        ),
    ] = DEFAULT_HEADER_TIMEOUT,
    body_timeout: Annotated[
        float,
        typer.Option(
            envvar="MICRO_BODY_TIMEOUT",
            min=0.1,
            help="Seconds a request body may go without a byte.",
        ),
    ] = DEFAULT_BODY_TIMEOUT,
    keep_alive_timeout: Annotated[
        int,
        typer.Option(
            envvar="MICRO_KEEP_ALIVE_TIMEOUT",
            min=1,
            help="Seconds an idle connection stays open (before its first request too).",
        ),
    ] = 5,
    max_connections: Annotated[
        int,
        typer.Option(
            envvar="MICRO_MAX_CONNECTIONS",
            min=1,
            help="Open connections; more are answered 503 and closed.",
        ),
    ] = DEFAULT_MAX_CONNECTIONS,
) -> None:
    """Serve APP with uvicorn (uvloop, httptools); the service registers itself and says
    where."""
    import uvicorn

    try:
        import_string, app_dir = locate_app(target)
        check_importable(import_string, app_dir)
    except typer.BadParameter as exc:  # one line, not a usage box: the APP is all that is wrong
        errors.print(f"asgi-micro run: {exc.message}")
        raise typer.Exit(2) from None
    if port:
        # Tell the service what it serves on, so it registers before the first request.
        os.environ.setdefault("MICRO_ADDRESS", f"{host}:{port}")
    os.environ.update(
        MICRO_MAX_MESSAGE_SIZE=str(max_message_size),
        MICRO_MAX_HEADER_SIZE=str(max_header_size),
        MICRO_HEADER_TIMEOUT=str(header_timeout),
        MICRO_BODY_TIMEOUT=str(body_timeout),
        MICRO_MAX_CONNECTIONS=str(max_connections),
    )
    uvicorn.run(
        import_string,
        host=host,
        port=port,
        reload=reload,
        app_dir=app_dir,
        loop="uvloop",
        http=_PROTOCOL,
        ws_max_size=max_message_size,
        timeout_keep_alive=keep_alive_timeout,
        lifespan="on",
        log_level=log_level,
        log_config=log_config(log_level),
    )


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging, with asgi-micro's records (what the service registered, where, and
    what went wrong) beside the server's own, in the same format."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["asgi_micro"] = {
        "handlers": ["default"],
        "level": "DEBUG" if level.lower() == "trace" else level.upper(),
        "propagate": False,
    }
    return config
