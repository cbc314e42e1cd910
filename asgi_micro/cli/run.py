"""``asgi-micro run APP``: serve an app with uvicorn; its service registers itself."""

from __future__ import annotations

import copy
import os
from typing import Annotated, Any

import typer

from .apps import locate_app

__all__ = ["log_config", "run"]


def run(
    target: Annotated[
        str, typer.Argument(metavar="APP", help="module:attr, or a file path (attr 'app').")
    ],
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    reload: Annotated[bool, typer.Option(help="Restart when code changes (development).")] = False,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve APP with uvicorn (uvloop, httptools); the service registers itself and says
    where."""
    import uvicorn

    import_string, app_dir = locate_app(target)
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
        http="httptools",
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
