"""pytest fixtures for testing your services with ``asgi_micro.testing.Cluster``.

Enable it in your ``conftest.py``::

    pytest_plugins = ["asgi_micro.testing.plugin"]

    async def test_welcome(micro_cluster):
        cluster = await micro_cluster(greeter_app, frontend_app)
        async with cluster.http("frontend") as http:
            assert (await http.get("/welcome/Ada")).status_code == 200

``micro_cluster(*apps, local=True)`` starts a ``Cluster`` of the apps and stops it after the
test, faults and all; ``micro_events(cluster, topic)`` is ``await cluster.events(topic)``.
Needs pytest-asyncio (``pip install 'asgi-micro[testing]'``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest_asyncio

from .cluster import Cluster, Events

__all__ = ["micro_cluster", "micro_events"]

StartCluster = Callable[..., Awaitable[Cluster]]


@pytest_asyncio.fixture
async def micro_cluster() -> AsyncIterator[StartCluster]:
    """Start a cluster of apps: ``cluster = await micro_cluster(greeter_app, frontend_app)``;
    every cluster started is stopped after the test."""
    started: list[Cluster] = []

    async def start(*apps: Any, local: bool = True) -> Cluster:
        cluster = Cluster(*apps, local=local)
        await cluster.start()
        started.append(cluster)
        return cluster

    try:
        yield start
    finally:
        for cluster in reversed(started):
            await cluster.stop()


@pytest_asyncio.fixture
async def micro_events() -> Callable[[Cluster, str], Awaitable[Events]]:
    """Capture a topic's events: ``events = await micro_events(cluster, "user.created")``."""

    async def capture(cluster: Cluster, topic: str) -> Events:
        return await cluster.events(topic)

    return capture
