"""The registry conformance suite (``asgi_micro.testing.registry``) on the core's backends;
the integrations run it on theirs (``tests/registry/test_etcd.py``, ``test_nats.py``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from asgi_micro.registry import Registry
from asgi_micro.registry.memory import MemoryRegistry
from asgi_micro.testing.registry import RegistryConformance
from tests.helpers import mdns


class TestMemory(RegistryConformance):
    @contextlib.asynccontextmanager
    async def pair(self) -> AsyncIterator[tuple[Registry, Registry]]:
        async with MemoryRegistry() as registry:
            yield registry, registry


class TestMDNS(RegistryConformance):
    @contextlib.asynccontextmanager
    async def pair(self) -> AsyncIterator[tuple[Registry, Registry]]:
        """Two zeroconf instances on loopback, as two processes on one machine would be."""
        async with mdns() as registry, mdns() as observer:
            yield registry, observer
