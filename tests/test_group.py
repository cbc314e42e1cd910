"""Several services in one process (``asgi_micro.group``, ``asgi-micro run a.py b.py``).

``ping`` and ``pong`` (``tests/group_apps``) call each other by name. The same test runs them in
one process, with calls over loopback and in process, and with ``pong`` moved to a process of
its own (over mDNS on loopback, in the test's own domain): the apps do not change.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from asgi_micro import Service
from asgi_micro.group import GroupError, ServiceGroup
from asgi_micro.registry import Registry
from tests.group_apps.peers import peer
from tests.helpers import eventually, mdns
from tests.processes import Server, asgi_micro, serving, spawn

PING = "tests/group_apps/ping.py"
PONG = "tests/group_apps/pong.py"

PLACEMENTS = ["one process", "one process, calls in process", "two processes"]


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=5.0) as client:
        yield client


def own_memory_registry(monkeypatch: pytest.MonkeyPatch) -> str:
    """A registry that this test's services share with nobody else's."""
    url = f"memory://group-{uuid.uuid4().hex}"
    monkeypatch.setenv("MICRO_REGISTRY", url)
    return url


@contextlib.asynccontextmanager
async def pong_elsewhere() -> AsyncIterator[Server]:
    """``pong`` served by ``asgi-micro run`` in a process of its own."""
    async with serving(PONG) as [server]:
        yield server


async def ask(http: httpx.AsyncClient, url: str, path: str, transport: str) -> dict[str, Any]:
    """``POST path`` once the service's peer can be found (mDNS takes a moment)."""

    async def answered() -> dict[str, Any]:
        reply = await http.post(f"{url}{path}", json={"text": "hi", "transport": transport})
        if reply.status_code == 503:  # the peer is not in the registry yet
            return {}
        assert reply.status_code == 200, reply.text
        answer: dict[str, Any] = reply.json()
        return answer

    return await eventually(answered, timeout=20, interval=0.2, message=f"an answer at {path}")


@pytest.mark.parametrize("placement", PLACEMENTS)
async def test_two_services_call_each_other(
    placement: str, monkeypatch: pytest.MonkeyPatch, http: httpx.AsyncClient
) -> None:
    if placement.startswith("one process"):
        own_memory_registry(monkeypatch)
    if placement == "one process, calls in process":
        monkeypatch.setenv("MICRO_LOCAL_CALLS", "true")
    ping = peer("ping", "pong")
    elsewhere: AbstractAsyncContextManager[Server | None]
    if placement == "two processes":
        apps = [ping]
        elsewhere = pong_elsewhere()
    else:
        apps = [ping, peer("pong", "ping")]
        elsewhere = contextlib.nullcontext()
    async with elsewhere as pong_process, ServiceGroup(*apps) as group:
        here = group.member("ping")
        if pong_process is None:
            pong_url, pong_pid = group.member("pong").url, os.getpid()
        else:
            pong_url, pong_pid = pong_process.url, pong_process.pid

        for transport in ("http", "grpc"):
            assert await ask(http, here.url, "/ping/ask", transport) == {
                "asked": "ping",
                "answer": {"text": "hi", "by": "pong", "pid": pong_pid},
            }
            assert await ask(http, pong_url, "/pong/ask", transport) == {
                "asked": "pong",
                "answer": {"text": "hi", "by": "ping", "pid": os.getpid()},
            }

        # Each service has a node of its own, at its own HTTP and gRPC ports.
        assert here.service is not None
        [ping_record] = await here.service.registry.get_service("ping")
        [pong_record] = await here.service.registry.get_service("pong")
        [ping_node], [pong_node] = ping_record.nodes, pong_record.nodes
        assert ping_node.address == here.address
        assert pong_node.address == pong_url.removeprefix("http://")
        assert ping_node.metadata["grpc"] != pong_node.metadata["grpc"]


async def test_ports_follow_the_first_one() -> None:
    group = ServiceGroup(FastAPI(), FastAPI(), FastAPI(), ports=8000)
    assert [member.port for member in group.members] == [8000, 8001, 8002]
    assert [m.port for m in ServiceGroup(FastAPI(), FastAPI(), ports=0).members] == [0, 0]


async def test_one_signal_drains_every_service_then_stops_every_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    own_memory_registry(monkeypatch)
    group = ServiceGroup(peer("ping", "pong"), peer("pong", "ping"))
    services = [member.service for member in group.members if member.service is not None]
    for service in services:
        service.drain_grace = 3.0  # drains one after the other would take 3 s each
    registry = services[0].registry
    before = signal.getsignal(signal.SIGTERM)
    serving = asyncio.create_task(group.serve())
    try:
        await eventually(lambda: registered(registry, "ping", "pong"), message="both registered")
        signal.raise_signal(signal.SIGTERM)
        # Both drain at once: both leave the registry while their servers still serve.
        await eventually(lambda: registered(registry), timeout=2.0, message="both deregistered")
        assert [service.status for service in services] == ["draining", "draining"]
        assert not serving.done()
        await asyncio.wait_for(serving, timeout=15)  # then every server stops, cleanly
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(serving, timeout=15)
    assert [service.status for service in services] == ["stopped", "stopped"]
    assert signal.getsignal(signal.SIGTERM) == before  # the group gave the signal back


async def test_a_service_that_fails_to_start_stops_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    own_memory_registry(monkeypatch)

    @contextlib.asynccontextmanager
    async def broken(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.sleep(0.2)  # ping has started by now
        raise RuntimeError("no database")
        yield

    ping = peer("ping", "pong")
    group = ServiceGroup(ping, (FastAPI(lifespan=broken), None), names=["ping", "broken"])
    with pytest.raises(GroupError, match=r"^broken failed to start; stopped the others$"):
        await group.start()
    service = group.member("ping").service
    assert service is not None
    assert service.status == "stopped"
    assert await service.registry.get_service("ping") == []


async def test_the_same_app_twice_is_refused() -> None:
    service = Service("twice")
    app = FastAPI(lifespan=service.lifespan)
    with pytest.raises(ValueError, match="its own Service"):
        ServiceGroup(app, app)


# -- asgi-micro run a.py b.py -----------------------------------------------------------------


@pytest.mark.slow
async def test_run_serves_several_apps_and_stops_them_all_on_sigterm(
    http: httpx.AsyncClient,
) -> None:
    with tempfile.TemporaryFile() as log:
        process = await spawn("run", PING, PONG, "--port", "0", "--log-level", "info", log=log)

        def output() -> str:
            log.seek(0)
            return log.read().decode(errors="replace")

        def where_they_serve() -> dict[str, str]:
            assert process.returncode is None, output()
            return dict(re.findall(r"(ping|pong) serves on (http://\S+),", output()))

        try:
            urls = await eventually(
                lambda: serving_at(where_they_serve), timeout=30, message="both serving"
            )
            assert urls["ping"] != urls["pong"]
            async with mdns() as observer:
                assert (await ask(http, urls["ping"], "/ping/ask", "http"))["answer"][
                    "by"
                ] == "pong"
                assert (await ask(http, urls["pong"], "/pong/ask", "grpc"))["answer"][
                    "by"
                ] == "ping"
                for name in ("ping", "pong"):
                    [record] = await observer.get_service(name)
                    assert [node.address for node in record.nodes] == [
                        urls[name].removeprefix("http://")
                    ]
                process.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(process.wait(), timeout=20) == 0, output()

                await eventually(lambda: registered(observer), timeout=10, message="both gone")
            assert output().count("Application shutdown complete.") == 2, output()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


@pytest.mark.slow
async def test_run_refuses_reload_with_several_apps() -> None:
    result = await asgi_micro("run", PING, PONG, "--reload")
    assert (result.returncode, result.stderr) == (
        2,
        "asgi-micro run: --reload serves one APP; run the others in a shell of their own\n",
    ), result


@pytest.mark.slow
async def test_run_says_which_port_is_taken_in_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await asgi_micro("run", PING, PONG, "--port", str(port))
    assert (result.returncode, result.stderr) == (
        1,
        f"asgi-micro run: ping: cannot serve on 127.0.0.1:{port}: Address already in use\n",
    ), result


# -- helpers ----------------------------------------------------------------------------------


async def registered(registry: Registry, *names: str) -> bool:
    """Whether exactly ``names`` have nodes in ``registry`` (of ``ping`` and ``pong``)."""
    found = [name for name in ("ping", "pong") if await registry.get_service(name)]
    return found == list(names)


async def serving_at(where_they_serve: Callable[[], dict[str, str]]) -> dict[str, str]:
    urls = where_they_serve()
    return urls if len(urls) == 2 else {}
