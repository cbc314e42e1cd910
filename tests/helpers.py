"""Helpers shared by the tests; ``eventually``, ``until`` and ``free_port`` are the kit's."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import uvicorn

from asgi_micro.registry.mdns import MDNSRegistry
from asgi_micro.testing import eventually as eventually
from asgi_micro.testing import free_port as free_port
from asgi_micro.testing import listening_socket
from asgi_micro.testing import until as until

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def new_mdns_domain() -> str:
    """An mDNS domain nobody else uses: ``t`` and 8 random hex digits."""
    return f"t{secrets.token_hex(4)}"


def mdns_domain() -> str:
    """The current test's mDNS domain (``MICRO_REGISTRY``, set for every test)."""
    url = os.environ.get("MICRO_REGISTRY", "")
    [domain] = parse_qs(urlsplit(url).query).get("domain", [""])
    assert domain, f"MICRO_REGISTRY names no mDNS domain: {url!r}"
    return domain


def mdns(**options: Any) -> MDNSRegistry:
    """An mDNS registry on loopback in the current test's domain."""
    options.setdefault("interfaces", ["127.0.0.1"])
    return MDNSRegistry(domain=mdns_domain(), **options)


def require_server(name: str, host: str, port: int) -> None:
    """Skip when a server the test needs is down; under ``CI=true`` that is a failure."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return
    except OSError as exc:
        message = f"{name} is not reachable on {host}:{port} ({exc})"
    if IN_CI:
        pytest.fail(f"{message}; .ci/run must start it", pytrace=False)
    pytest.skip(message)


async def stop_children(children: Sequence[asyncio.subprocess.Process]) -> None:
    """SIGTERM each child process still running, and SIGKILL one that does not exit in 20 s."""
    for child in children:
        if child.returncode is None:
            child.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(child.wait(), timeout=20)
            except TimeoutError:
                child.kill()
                await child.wait()


@contextlib.asynccontextmanager
async def serve(
    app: Any, *, host: str = "127.0.0.1", port: int | None = None
) -> AsyncIterator[str]:
    """Run ``app`` on uvicorn in this event loop, lifespan included; yields ``host:port``.

    Without a ``port`` it listens on one the kernel gives its socket, bound before uvicorn
    starts, so that nobody takes it in between; uvicorn listens on it once the app started,
    where a service without an address of its own looks for it."""
    sock = listening_socket(host, port or 0, listen=False)  # a service finds it as it listens
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, host=host, port=port, lifespan="on", log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                sock.close()
                task.result()
                raise RuntimeError("uvicorn stopped before it started")
            await asyncio.sleep(0.01)
        yield f"{host}:{port}"
    finally:
        server.should_exit = True
        await task
