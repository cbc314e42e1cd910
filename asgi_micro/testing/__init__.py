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
import random
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .cluster import Cluster, ClusterNode

__all__ = ["Cluster", "ClusterNode", "eventually", "free_port", "listening_socket", "until"]

T = TypeVar("T")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on at ``host`` right now, for a server started a moment later.

    It is taken outside the kernel's ephemeral range where the system says what that is (Linux),
    because a port from ``bind(("", 0))`` is free only until the next ephemeral port is handed
    out: the local end of any outgoing connection, or another process's ``bind`` to port 0, may
    take it before the server binds (seen: uvicorn failing to start on a busy CI machine). Ports
    there are handed out only to whoever asks for one by number.
    """
    span = _unclaimed_ports()
    if span is not None:
        first, last = span
        for _ in range(64):
            port = _random.randint(first, last)
            if _bindable(host, port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        found: int = sock.getsockname()[1]
        return found


def listening_socket(
    host: str = "127.0.0.1", port: int = 0, *, listen: bool = True
) -> socket.socket:
    """A TCP socket listening on ``host:port`` (``0``: a port the kernel picks), for a server
    to serve on (``uvicorn.Server.serve(sockets=[...])``): bound and listening before the
    server starts, the port is the test's from that moment (connections wait in the backlog
    until the server accepts). Raises ``OSError`` when the port is taken.

    ``listen=False`` leaves it bound only, for the server to listen on as it starts: what a
    ``Service`` without an address of its own needs, since it finds its address among the
    sockets that begin to listen once it started. Bound, the port is safe from the kernel
    handing it out, though another ``SO_REUSEADDR`` socket could still bind it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        if listen:
            sock.listen()
    except OSError:
        sock.close()
        raise
    return sock


_random = random.SystemRandom()  # not the module's: hypothesis seeds that one the same in every run
_EPHEMERAL_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
_LOWEST = 20000  # below it sit the well-known and registered ports of servers a machine runs


def _unclaimed_ports(path: str = _EPHEMERAL_RANGE) -> tuple[int, int] | None:
    """The widest span of ports from 20000 that the kernel does not hand out on its own
    (below or above its ephemeral range), or None when the range cannot be read or leaves no
    span of at least 1,000 ports."""
    try:
        with open(path) as file:
            low, high = (int(part) for part in file.read().split())
    except (OSError, ValueError):
        return None
    spans = [(_LOWEST, low - 1), (max(high + 1, _LOWEST), 65535)]
    first, last = max(spans, key=lambda span: span[1] - span[0])
    return (first, last) if last - first >= 1000 else None


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


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
