"""Kits for testing asgi-micro backends and services (``pip install 'asgi-micro[testing]'``).

``asgi_micro.testing.registry``, ``.broker``, ``.store`` and ``.sync`` hold the conformance
suites that every backend of the core and of ``integrations/`` passes: subclass one in your
tests, say how to open your backend, and pytest runs the whole suite against it. The helpers
here are what those suites wait with.

``Cluster`` (``asgi_micro.testing.cluster``) runs your own services in process on in-memory
backends, with faults to inject, and ``asgi_micro.testing.plugin`` gives pytest fixtures for
it (``pytest_plugins = ["asgi_micro.testing.plugin"]``).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .cluster import Cluster, ClusterNode

__all__ = ["Cluster", "ClusterNode", "eventually", "free_port", "until"]

T = TypeVar("T")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on at ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


async def eventually(
    check: Callable[[], Awaitable[T]],
    *,
    timeout: float = 5.0,
    interval: float = 0.05,
    message: str = "condition not met",
) -> T:
    """Poll ``check`` until it returns a truthy value; for state that converges over a network."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} within {timeout}s (last: {result!r})")
        await asyncio.sleep(interval)


async def until(check: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """Wait until ``check()`` is true; for state a test's own tasks change (events handled...)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def __getattr__(name: str) -> Any:
    # The cluster imports the whole framework; the conformance kits need none of it.
    if name in ("Cluster", "ClusterNode"):
        from . import cluster

        return getattr(cluster, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
