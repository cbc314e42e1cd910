"""Backends chosen by URL: ``mdns://``, ``memory://``, ``postgresql://...``.

Each part keeps one small table from URL scheme to ``"module:Class"``; packages outside the core
add schemes through the entry point group ``asgi_micro.<part>`` (``asgi_micro.registry``,
``asgi_micro.store``, ...), naming in brackets the extra that installs what the backend needs:

    [project.entry-points."asgi_micro.broker"]
    nats = "asgi_micro_nats.broker:NATSBroker [nats]"

A backend class offers ``from_url(url, *, parts)``: ``parts`` holds the parts of the service
built before it (its name, registry, store...), for a backend that needs another part, as the
embedded HTTP broker needs the registry and the store.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from .registry import Registry
    from .store import Store

__all__ = ["Backend", "Lifecycle", "MissingDependency", "Parts", "Pluggable", "load_backend"]


class MissingDependency(ImportError):
    """A backend needs an optional dependency that is not installed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Parts:
    """The parts of a service built before a backend, for a backend that needs them."""

    service: str = ""
    registry: Registry | None = None
    store: Store | None = None


class Lifecycle:
    """What has a lifecycle: ``start`` and ``stop``, both idempotent, or ``async with``."""

    async def start(self) -> None:
        """Start; called again it does nothing."""

    async def stop(self) -> None:
        """Stop; called again it does nothing."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


class Pluggable(Lifecycle, ABC):
    """What every backend chosen by URL shares: ``from_url``, and a lifecycle that is explicit
    and idempotent (``start``/``stop`` or ``async with``; nothing connects in ``__init__``)."""

    url: str = ""

    @classmethod
    @abstractmethod
    def from_url(cls, url: str, *, parts: Parts | None = None) -> Self:
        """The backend ``url`` names; ``parts`` are the service's parts built before it."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class Backend:
    """Where a scheme's class lives, and which extra installs what it imports."""

    __slots__ = ("extra", "target")

    def __init__(self, target: str, *, extra: str | None = None) -> None:
        self.target = target
        self.extra = extra


def load_backend(
    part: str, url: str, table: dict[str, Backend], *, parts: Parts | None = None
) -> Any:
    """Build the backend of ``part`` that ``url`` names."""
    scheme = urlsplit(url).scheme.lower()
    if not scheme:
        raise ValueError(
            f"{part} URL {url!r} has no scheme; expected one of {_schemes(part, table)}"
        )
    backend = table.get(scheme)
    source: str | None = "asgi-micro"  # the distribution the backend comes from, if known
    if backend is None:
        found = _entry_point(part, scheme)
        if found is not None:
            backend = Backend(found.value.partition("[")[0].strip(), extra=_extra(found))
            source = found.dist.name if found.dist is not None else None
    if backend is None:
        raise ValueError(
            f"unknown {part} scheme {scheme!r} in {url!r}; expected one of {_schemes(part, table)}"
        )
    module_name, _, class_name = backend.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name is None or (exc.name.startswith("asgi_micro") and source == "asgi-micro"):
            raise
        if source is None:
            install = f"install the distribution that provides {module_name!r}"
        elif backend.extra:
            install = f"pip install '{source}[{backend.extra}]'"
        else:
            install = f"pip install {exc.name}"
        origin = f" (from {source})" if source else ""
        raise MissingDependency(
            f"the {scheme}:// {part}{origin} needs the package {exc.name!r}: {install}"
        ) from exc
    return getattr(module, class_name).from_url(url, parts=parts or Parts())


def _entry_point(part: str, scheme: str) -> EntryPoint | None:
    for entry_point in entry_points(group=f"asgi_micro.{part}"):
        if entry_point.name == scheme:
            return entry_point
    return None


def _extra(entry_point: EntryPoint) -> str | None:
    extras = entry_point.extras
    return extras[0] if extras else None


def _schemes(part: str, table: dict[str, Backend]) -> str:
    names = set(table) | {ep.name for ep in entry_points(group=f"asgi_micro.{part}")}
    return ", ".join(f"{name}://" for name in sorted(names))
