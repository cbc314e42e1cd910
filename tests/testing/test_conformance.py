"""The cluster's in-memory parts are held to the conformance suites the real backends pass:
its registry (with the cluster's own services registered in it) and its broker (the hub its
services publish and subscribe on). The client's behaviour through it is checked both ways,
in process and over loopback, by ``tests/testing/test_cluster.py`` and ``tests/test_local.py``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from asgi_micro.broker import Broker
from asgi_micro.broker.memory import MemoryBroker
from asgi_micro.registry import Registry
from asgi_micro.testing import Cluster
from asgi_micro.testing.broker import BrokerConformance
from asgi_micro.testing.registry import RegistryConformance
from example_apps.greeter.app import app as greeter_app


class TestClusterRegistry(RegistryConformance):
    @contextlib.asynccontextmanager
    async def pair(self) -> AsyncIterator[tuple[Registry, Registry]]:
        async with Cluster(greeter_app) as cluster:
            yield cluster.registry, cluster.registry


class TestClusterBroker(BrokerConformance):
    @staticmethod
    @contextlib.asynccontextmanager
    async def brokers() -> AsyncIterator[Callable[[str], Broker]]:
        async with Cluster(greeter_app) as cluster:
            yield lambda source: MemoryBroker(cluster.broker_url, source=source)
