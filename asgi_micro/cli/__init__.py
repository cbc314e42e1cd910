"""The ``asgi-micro`` command: run a service, look at the registry, call endpoints, read the
store, publish and subscribe to events, print the ``.proto`` and the AsyncAPI document, manage
auth accounts, rules, tokens and keys, and check that the parts in use are reachable."""

from __future__ import annotations

from typing import Annotated

import typer

from ..__about__ import __version__
from .api import api
from .apps import import_app, locate_app
from .asyncapi import asyncapi
from .auth import app as auth_app
from .client import client
from .config import app as config_app
from .doctor import doctor
from .events import publish, subscribe
from .mcp import mcp
from .new import new
from .proto import proto
from .run import run
from .services import call, describe, health, services
from .store import app as store_app
from .web import web

__all__ = ["app", "import_app", "locate_app", "main"]


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"asgi-micro {__version__}")
        raise typer.Exit


app = typer.Typer(
    name="asgi-micro",
    help="Run micro services and talk to them by name.",
    no_args_is_help=True,
    add_completion=False,
)
for command in (
    run,
    services,
    describe,
    call,
    health,
    publish,
    subscribe,
    proto,
    asyncapi,
    doctor,
    mcp,
    web,
    api,
    client,
    new,
):
    app.command()(command)
app.add_typer(store_app, name="store", help="Read and write the store.")
app.add_typer(auth_app, name="auth", help="Accounts, rules, tokens and signing keys.")
app.add_typer(config_app, name="config", help="Show, get and set the service's config.")


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Run micro services and talk to them by name."""


def main() -> None:
    app()
