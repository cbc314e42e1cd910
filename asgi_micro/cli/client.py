"""``asgi-micro client SERVICE -o FILE``: generate a typed async client of a service.

asgi-micro client greeter -o greeter_client.py                       # from the registry
asgi-micro client example_apps/greeter/app.py -o greeter_client.py   # from the app's code

SERVICE is a service name, read from the registry (the schemas its nodes registered), or an app
(``module:attr`` or a file path, as ``asgi-micro proto`` takes), whose endpoints are those it
would register: both go through one generator (``asgi_micro.client.codegen``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ..client.codegen import class_name, generate
from ..endpoints import endpoints_of
from ..registry import Endpoint
from .apps import import_app, target_service
from .common import DEFAULT_URL, RegistryOption, errors, every_node, with_registry

__all__ = ["client"]


def client(
    target: Annotated[
        str,
        typer.Argument(
            metavar="SERVICE",
            help="A service name (read from the registry), or an app: module:attr or a .py file.",
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", dir_okay=False, help="File to write; default: stdout."),
    ] = None,
    registry: RegistryOption = DEFAULT_URL,
    version: Annotated[
        str | None,
        typer.Option(help="The version whose endpoints to read, when several run."),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option("--service", help="Service name of an app; default: its Service's."),
    ] = None,
) -> None:
    """Generate a typed async client of SERVICE: pydantic models of its messages and one
    method per RPC endpoint, checked by mypy."""
    if _is_app(target):
        service, endpoints = _from_app(target, name)
        source = f"the app {target}"
    else:
        service, endpoints = name or target, _from_registry(target, registry, version)
        source = f"the registry ({registry})"
    try:
        code = generate(service, endpoints, source=source)
    except ValueError as exc:
        errors.print(f"error: {exc}")
        raise typer.Exit(1) from None
    if output is None:
        sys.stdout.write(code)
        return
    output.write_text(code, encoding="utf-8")
    errors.print(f"wrote {class_name(service)} to {output}")


def _is_app(target: str) -> bool:
    """Whether ``target`` names an app rather than a service: ``module:attr``, or a path."""
    return ":" in target or target.endswith(".py") or Path(target).exists()


def _from_app(target: str, name: str | None) -> tuple[str, list[Endpoint]]:
    """The service name and the endpoints of the app ``target``, as it would register them."""
    app = import_app(target)
    if name is None:
        service = target_service(target, app)
        if service is None:
            raise typer.BadParameter(
                "cannot tell which Service serves this app; name it with --service",
                param_hint="SERVICE",
            )
        name = service.name
    return name, endpoints_of(app)


def _from_registry(service: str, url: str, version: str | None) -> list[Endpoint]:
    """The endpoints of ``service`` that its nodes registered, at ``version`` when several
    versions run."""
    records = with_registry(url, lambda registry: every_node(registry, service))
    if not records:
        errors.print(
            f"error: no service {service!r} in the registry {url}: start it, "
            "or pass the registry it uses with --registry"
        )
        raise typer.Exit(1)
    versions = ", ".join(sorted({record.version for record in records}))
    if version is not None:
        records = [record for record in records if record.version == version]
        if not records:
            errors.print(f"error: {service} has no version {version!r}; it runs {versions}")
            raise typer.Exit(1)
    elif len(records) > 1:
        errors.print(f"error: {service} runs versions {versions}: pick one with --version")
        raise typer.Exit(1)
    return records[0].endpoints
