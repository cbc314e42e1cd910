"""What every ``asgi-micro`` command shares: where output goes and the common options."""

from __future__ import annotations

import asyncio
import enum
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import orjson
import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from ..errors import MicroError
from ..registry import DEFAULT_URL, Registry, from_url
from ..registry import Service as ServiceRecord

T = TypeVar("T")

__all__ = [
    "DEFAULT_URL",
    "AuthDefault",
    "JsonOption",
    "MetadataOption",
    "RegistryOption",
    "console",
    "errors",
    "every_node",
    "pairs",
    "print_json",
    "print_table",
    "with_registry",
]

# What these print is data (names, metadata, schemas such as "map[string]string"): never markup,
# and never a line broken at the terminal's width (scripts read it; people copy it).
console = Console(markup=False, soft_wrap=True)
errors = Console(stderr=True, markup=False, soft_wrap=True)

RegistryOption = Annotated[
    str,
    typer.Option(
        "--registry",
        envvar="MICRO_REGISTRY",
        help="Registry URL, e.g. mdns:// (loopback), mdns://0.0.0.0 (every interface), memory://.",
    ),
]


class AuthDefault(enum.StrEnum):
    """``MICRO_AUTH_DEFAULT``: what a gateway decides where no rule matches."""

    open = "open"
    deny = "deny"


JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
MetadataOption = Annotated[
    list[str] | None, typer.Option("--metadata", "-m", help="Metadata as key=value.")
]


def pairs(items: list[str]) -> dict[str, str]:
    """``key=value`` options as a dict."""
    found = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected key=value, got {item!r}", param_hint="--metadata")
        found[key] = value
    return found


def print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def print_table(table: Table) -> None:
    """Print ``table`` whole: wider than the terminal (or than 80 columns in a pipe) if it
    needs to be, since cut cells lose what people copy out of them (node ids, addresses)."""
    needed = Measurement.get(console, console.options.update_width(1 << 16), table).maximum
    if needed <= console.width:
        console.print(table)
        return
    wide = Console(
        file=console.file,
        width=needed,
        markup=False,
        soft_wrap=True,
        force_terminal=console.is_terminal,
        color_system=console.color_system,  # type: ignore[arg-type]
    )
    wide.print(table)


def with_registry(url: str, action: Callable[[Registry], Awaitable[T]]) -> T:
    """Run ``action`` on the registry ``url`` opened for it; its errors end the command in
    one line (exit 1 for the registry's, 2 for a bad URL)."""

    async def go() -> T:
        registry = from_url(url)
        async with registry:
            return await action(registry)

    try:
        return asyncio.run(go())
    except MicroError as exc:
        errors.print_json(orjson.dumps(exc.to_dict()).decode())
        raise typer.Exit(1) from None
    except ValueError as exc:
        errors.print(str(exc))
        raise typer.Exit(2) from None


async def every_node(registry: Registry, name: str) -> list[ServiceRecord]:
    """``get_service`` once the registry has heard every node: a fresh mDNS registry returns
    the first node that answers, and a tool that shows every node must not stop there."""
    await registry.list_services()
    return await registry.get_service(name)
