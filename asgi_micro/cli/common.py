"""What every ``asgi-micro`` command shares: where output goes and the common options."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console

from ..registry import DEFAULT_URL

__all__ = [
    "DEFAULT_URL",
    "JsonOption",
    "MetadataOption",
    "RegistryOption",
    "console",
    "errors",
    "pairs",
    "print_json",
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
