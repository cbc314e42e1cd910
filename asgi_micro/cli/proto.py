"""``asgi-micro proto APP``: the ``.proto`` file of an app's RPC endpoints, for other languages.

asgi-micro proto example_apps/greeter/app.py > greeter.proto
asgi-micro proto example_apps/greeter/app.py --check greeter.proto   # exit 1 if renumbered
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..grpc.schema import grpc_schema, service_package
from ..protobuf import IncompatibleSchema, ProtoSchemaError, check_compatible, render_proto
from .apps import import_app, target_service

__all__ = ["proto"]


def proto(
    target: Annotated[
        str, typer.Argument(metavar="APP", help="module:attr, or a file path (attr 'app').")
    ],
    check: Annotated[
        Path | None,
        typer.Option(
            help="The .proto clients were built from: exit 1, listing every field the app "
            "would renumber or retype, unless the new file is compatible with it.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    package: Annotated[
        str | None,
        typer.Option(help="Protobuf package; default: the app's service's (grpc_package)."),
    ] = None,
) -> None:
    """Print the .proto of APP's RPC endpoints: what gRPC serves, to generate clients from."""
    app = import_app(target)
    if package is None:
        service = target_service(target, app)
        if service is None:
            raise typer.BadParameter(
                "cannot tell which Service serves this app; name the package with --package",
                param_hint="APP",
            )
        package = service_package(service.name, service.grpc_package)
    try:
        schema = grpc_schema(app, package=package)
    except ProtoSchemaError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    for name, reason in schema.skipped.items():
        typer.echo(f"note: {name} is served over HTTP only: {reason}", err=True)
    if not schema.methods:
        typer.echo("error: the app has no RPC endpoint that gRPC can serve", err=True)
        raise typer.Exit(1)
    if check is not None:
        try:
            check_compatible(schema.proto, check.read_text(encoding="utf-8"))
        except IncompatibleSchema as exc:
            typer.echo(f"{check} is not compatible with the app:", err=True)
            for change in exc.changes:
                typer.echo(f"  {change}", err=True)
            raise typer.Exit(1) from None
        except ProtoSchemaError as exc:  # the previous file itself is broken
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
    typer.echo(render_proto(schema.proto), nl=False)
