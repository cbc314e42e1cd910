"""The ``asgi-micro`` command: run a service, look at the registry, call endpoints, read the
store, publish and subscribe to events, print the ``.proto`` and the AsyncAPI document, manage
auth accounts, rules, tokens and keys."""

from __future__ import annotations

import typer

from .apps import import_app, locate_app
from .asyncapi import asyncapi
from .auth import app as auth_app
from .config import app as config_app
from .events import publish, subscribe
from .proto import proto
from .run import run
from .services import call, describe, health, services
from .store import app as store_app

__all__ = ["app", "import_app", "locate_app", "main"]

app = typer.Typer(
    name="asgi-micro",
    help="Run micro services and talk to them by name.",
    no_args_is_help=True,
    add_completion=False,
)
for command in (run, services, describe, call, health, publish, subscribe, proto, asyncapi):
    app.command()(command)
app.add_typer(store_app, name="store", help="Read and write the store.")
app.add_typer(auth_app, name="auth", help="Accounts, rules, tokens and signing keys.")
app.add_typer(config_app, name="config", help="Show, get and set the service's config.")


def main() -> None:
    app()
