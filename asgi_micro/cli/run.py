"""``asgi-micro run APP...``: serve an app with uvicorn; its service registers itself.

With several apps (``asgi-micro run a.py b.py``) they share one process and one event loop
(``asgi_micro.group``): each gets a server and a node of its own, the first on ``--port`` and
the next ones on the ports after it (each on any free port with ``--port 0``).

It serves with ``asgi_micro.server.MicroHttpProtocol`` (uvicorn's httptools protocol with the
limits of ``asgi_micro.limits``), and puts the limits it was given in the environment as the
``MICRO_*`` settings, where the app's service and the protocol (in a ``--reload`` worker too)
find them: one ``--max-message-size`` for bodies, WebSocket messages and gRPC messages.
"""

from __future__ import annotations

import copy
import logging.config
import os
import sys
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from ..limits import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_HEADER_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
)
from .apps import check_importable, import_app, locate_app, service_of
from .common import errors

if TYPE_CHECKING:
    from ..service import Service

__all__ = ["log_config", "run"]

_PROTOCOL = "asgi_micro.server:MicroHttpProtocol"


def run(
    targets: Annotated[
        list[str],
        typer.Argument(
            metavar="APP",
            help="module:attr, or a file path (attr 'app'); several share one process.",
        ),
    ],
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(help="HTTP port; the next apps take the next ones (0: any free).")
    ] = 8000,
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
    where. Several APPs share one process, each on its own port with its own node."""
    if reload and len(targets) > 1:
        _fail("--reload serves one APP; run the others in a shell of their own", 2)
    located = [_locate(target) for target in targets]
    os.environ.update(
        MICRO_MAX_MESSAGE_SIZE=str(max_message_size),
        MICRO_MAX_HEADER_SIZE=str(max_header_size),
        MICRO_HEADER_TIMEOUT=str(header_timeout),
        MICRO_BODY_TIMEOUT=str(body_timeout),
        MICRO_MAX_CONNECTIONS=str(max_connections),
    )
    os.environ.setdefault("MICRO_GC_FREEZE", "true")  # the process is ours: asgi_micro.heap
    if len(targets) > 1:
        _run_group(targets, host, port, keep_alive_timeout, log_level)
        return
    import uvicorn

    [(import_string, app_dir)] = located
    if port:
        # Tell the service what it serves on, so it registers before the first request.
        os.environ.setdefault("MICRO_ADDRESS", f"{host}:{port}")
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


def _locate(target: str) -> tuple[str, str]:
    """``locate_app``, refusing an APP that is not there in one line, not a usage box (the
    APP is all that is wrong), before a server starts."""
    try:
        import_string, app_dir = locate_app(target)
        check_importable(import_string, app_dir)
    except typer.BadParameter as exc:
        _fail(exc.message, 2)
    return import_string, app_dir


def _fail(message: str, code: int) -> NoReturn:
    errors.print(f"asgi-micro run: {message}")
    raise typer.Exit(code)


def _run_group(
    targets: list[str], host: str, port: int, keep_alive_timeout: int, log_level: str
) -> None:
    """Serve the apps in one process (``asgi_micro.group``) until SIGINT or SIGTERM."""
    from ..group import GroupError, serve

    _configure_logging(log_level)
    apps = [_app_with_service(target) for target in targets]
    try:
        serve(*apps, host=host, ports=port, keep_alive_timeout=keep_alive_timeout)
    except (GroupError, ValueError) as exc:
        _fail(str(exc), 1)


def _app_with_service(target: str) -> tuple[Any, Service | None]:
    """The app ``target`` names, imported as uvicorn would (its directory stays on the path,
    for the imports its handlers make later), and its service."""
    from ..service import service_of_app

    import_string, app_dir = locate_app(target)
    if app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    try:
        app = import_app(target)
    except typer.BadParameter as exc:
        _fail(exc.message, 2)
    # Its middleware's or lifespan's, else the one Service its module holds.
    return app, service_of_app(app) or service_of(app, sys.modules[import_string.partition(":")[0]])


def _configure_logging(level: str) -> None:
    """What ``uvicorn.run`` does with ``log_config`` and ``log_level``, once for every server
    of a group."""
    from uvicorn.config import LOG_LEVELS

    logging.config.dictConfig(log_config(level))
    for name in ("uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        logging.getLogger(name).setLevel(LOG_LEVELS[level.lower()])


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
