"""Backends chosen by URL: ``mdns://``, ``memory://``, ``postgresql://...``.

Each part keeps one small table from URL scheme to ``"module:Class"``; packages outside the core
add schemes through the entry point group ``asgi_micro.<part>`` (``asgi_micro.registry``,
``asgi_micro.store``, ...). A backend class offers ``from_url(url)``.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any
from urllib.parse import urlsplit

__all__ = ["Backend", "MissingDependency", "load_backend"]


class MissingDependency(ImportError):
    """A backend needs an optional dependency that is not installed."""


class Backend:
    """Where a scheme's class lives, and which extra installs what it imports."""

    __slots__ = ("extra", "target")

    def __init__(self, target: str, *, extra: str | None = None) -> None:
        self.target = target
        self.extra = extra


def load_backend(part: str, url: str, table: dict[str, Backend]) -> Any:
    """Build the backend of ``part`` that ``url`` names."""
    scheme = urlsplit(url).scheme.lower()
    if not scheme:
        raise ValueError(
            f"{part} URL {url!r} has no scheme; expected one of {_schemes(part, table)}"
        )
    backend = table.get(scheme)
    if backend is None:
        for entry_point in entry_points(group=f"asgi_micro.{part}"):
            if entry_point.name == scheme:
                backend = Backend(entry_point.value)
                break
    if backend is None:
        raise ValueError(
            f"unknown {part} scheme {scheme!r} in {url!r}; expected one of {_schemes(part, table)}"
        )
    module_name, _, class_name = backend.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if backend.extra is None or exc.name is None or exc.name.startswith("asgi_micro"):
            raise
        raise MissingDependency(
            f"the {scheme}:// {part} needs the package {exc.name!r}: "
            f"pip install 'asgi-micro[{backend.extra}]'"
        ) from exc
    return getattr(module, class_name).from_url(url)


def _schemes(part: str, table: dict[str, Backend]) -> str:
    names = set(table) | {ep.name for ep in entry_points(group=f"asgi_micro.{part}")}
    return ", ".join(f"{name}://" for name in sorted(names))
