"""The ``registry`` fixture runs each conformance test once per backend.

A backend joins the suite by adding a factory to ``BACKENDS``: an async context manager that
yields a started registry for the test, and a fresh one that sees the same records (a second
process on the same network for mDNS, the same object for memory).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager as AsyncContextManager

import pytest

from asgi_micro.registry import Registry
from asgi_micro.registry.memory import MemoryRegistry
from tests.helpers import mdns


@contextlib.asynccontextmanager
async def memory_pair() -> AsyncIterator[tuple[Registry, Registry]]:
    registry = MemoryRegistry()
    async with registry:
        yield registry, registry


@contextlib.asynccontextmanager
async def mdns_pair() -> AsyncIterator[tuple[Registry, Registry]]:
    """Two zeroconf instances on loopback, as two processes on one machine would be."""
    async with (
        mdns() as registry,
        mdns() as observer,
    ):
        yield registry, observer


BACKENDS: dict[str, Callable[[], AsyncContextManager[tuple[Registry, Registry]]]] = {
    "mdns": mdns_pair,
    "memory": memory_pair,
}


@pytest.fixture(params=sorted(BACKENDS))
async def registry_pair(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Registry, Registry]]:
    """Two handles on one backend: the first registers, the second looks up."""
    async with BACKENDS[request.param]() as pair:
        yield pair
