"""Backends by URL, from the core's tables and from other packages' entry points."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from typing import Any

import pytest

from asgi_micro import plugins
from asgi_micro.plugins import MissingDependency, Parts
from asgi_micro.registry import Registry, from_url
from asgi_micro.registry.memory import MemoryRegistry


class Recorded(MemoryRegistry):
    """A registry that keeps the parts it was built with."""

    parts: Parts | None = None

    @classmethod
    def from_url(cls, url: str, *, parts: Parts | None = None) -> Recorded:
        registry = cls()
        registry.parts = parts
        return registry


def entry_points_with(*found: EntryPoint) -> Any:
    def entry_points(*, group: str) -> list[EntryPoint]:
        return [entry_point for entry_point in found if entry_point.group == group]

    return entry_points


def test_a_backend_from_an_entry_point_gets_the_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    point = EntryPoint("recorded", f"{__name__}:Recorded", "asgi_micro.registry")
    monkeypatch.setattr(plugins, "entry_points", entry_points_with(point))
    parts = Parts(service="greeter")
    registry = from_url("recorded://", parts=parts)
    assert isinstance(registry, Recorded)
    assert registry.parts is parts


def test_an_entry_point_whose_package_is_missing_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    point = EntryPoint(
        "nats", "asgi_micro_nowhere.registry:NATSRegistry [nats]", "asgi_micro.registry"
    )
    monkeypatch.setattr(plugins, "entry_points", entry_points_with(point))
    with pytest.raises(MissingDependency) as caught:
        from_url("nats://127.0.0.1:4222")
    message = str(caught.value)
    assert "the nats:// registry needs the package 'asgi_micro_nowhere'" in message
    assert "install the distribution that provides 'asgi_micro_nowhere.registry'" in message


def test_unknown_schemes_list_the_known_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    point = EntryPoint("recorded", f"{__name__}:Recorded", "asgi_micro.registry")
    monkeypatch.setattr(plugins, "entry_points", entry_points_with(point))
    with pytest.raises(ValueError, match=r"expected one of mdns://, memory://, recorded://"):
        from_url("consul://")


def test_every_backend_declares_from_url() -> None:
    """A half-written backend fails at construction: ``from_url`` is abstract."""

    class HalfWritten(Registry):
        async def register(self, service: Any, *, ttl: float | None = None) -> None: ...

        async def deregister(self, service: Any) -> None: ...

        async def get_service(self, name: str) -> list[Any]:
            return []

        async def list_services(self) -> list[Any]:
            return []

        def watch(self, service: str | None = None) -> Any:
            raise NotImplementedError

    with pytest.raises(TypeError, match="from_url"):
        HalfWritten()  # type: ignore[abstract]
