"""A user's test of their own services with ``asgi_micro.testing``: the example frontend, which
calls the example greeter by name, checked when the greeter is slow, partitioned off, failing,
killed and restarted, and with a circuit breaker that opens and closes as configured.

Each test runs twice: with the cluster's calls in process, and over loopback HTTP; faults,
breakers and errors must read the same both ways."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import time
from collections.abc import Awaitable, Callable

import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from asgi_micro import MicroRouter, Service, errors
from asgi_micro.client.policies import Breaker, Policies, Policy
from asgi_micro.registry import EventType
from asgi_micro.testing import Cluster, free_port, until
from asgi_micro.testing.cluster import Events, service_of_app
from example_apps.frontend.app import app as frontend_app
from example_apps.greeter.app import app as greeter_app

StartCluster = Callable[..., Awaitable[Cluster]]


@pytest.fixture(params=[True, False], ids=["in-process", "loopback"])
def cluster_of(request: pytest.FixtureRequest, micro_cluster: StartCluster) -> StartCluster:
    return functools.partial(micro_cluster, local=request.param)


async def welcome(cluster: Cluster) -> tuple[int, dict[str, object]]:
    async with cluster.http("frontend", timeout=10) as http:
        response = await http.get("/welcome/Ada")
    return response.status_code, response.json()


async def test_a_healthy_greeter_answers(cluster_of: StartCluster) -> None:
    cluster = await cluster_of(greeter_app, frontend_app)
    greeter = cluster.node("greeter").service
    before = greeter.stats.requests
    assert await welcome(cluster) == (200, {"message": "Hello Ada"})
    assert greeter.stats.requests == before + 1
    reply = await cluster.client.call("greeter", "Greeter.Hello", {"name": "Bo"})
    assert reply == {"message": "Hello Bo"}


async def test_a_slow_greeter_slows_the_frontend_and_past_its_timeout_fails_it(
    cluster_of: StartCluster,
) -> None:
    cluster = await cluster_of(greeter_app, frontend_app)
    frontend = cluster.node("frontend").service
    frontend.client.policies = Policies({"greeter": Policy(timeout=0.5, retries=0)})
    cluster.node("greeter").delay(0.2)
    started = time.monotonic()
    assert await welcome(cluster) == (200, {"message": "Hello Ada"})
    assert 0.2 <= time.monotonic() - started < 2
    cluster.node("greeter").delay(2)
    started = time.monotonic()
    status, body = await welcome(cluster)
    assert (status, body["id"]) == (408, errors.CLIENT_ID)
    assert time.monotonic() - started < 1.5
    cluster.heal()
    assert await welcome(cluster) == (200, {"message": "Hello Ada"})


async def test_a_partition_between_frontend_and_greeter(cluster_of: StartCluster) -> None:
    cluster = await cluster_of(greeter_app, frontend_app)
    cluster.node("frontend").service.client.policies = Policies({"greeter": Policy(timeout=0.4)})
    cluster.partition("frontend", "greeter")
    status, body = await welcome(cluster)
    assert (status, body["id"]) == (408, errors.CLIENT_ID)
    # The test's own client is on neither side of the partition.
    assert await cluster.client.call("greeter", "Greeter.Hello", {"name": "Ada"}) == {
        "message": "Hello Ada"
    }
    cluster.heal()
    assert await welcome(cluster) == (200, {"message": "Hello Ada"})


async def test_the_greeters_errors_reach_the_frontends_caller(cluster_of: StartCluster) -> None:
    cluster = await cluster_of(greeter_app, frontend_app)
    cluster.node("greeter").fail(500, "greeter broke")
    status, body = await welcome(cluster)
    assert (status, body["id"], body["detail"]) == (500, "greeter", "greeter broke")
    cluster.node("greeter").heal()
    assert await welcome(cluster) == (200, {"message": "Hello Ada"})


async def test_the_breaker_opens_on_failures_and_closes_after_its_probe(
    cluster_of: StartCluster,
) -> None:
    cluster = await cluster_of(greeter_app, frontend_app)
    breaker = Breaker(failure_rate=0.5, min_calls=4, window=10, open_for=0.5, probes=1)
    cluster.node("frontend").service.client.policies = Policies(
        {"greeter": Policy(retries=0, breaker=breaker)}
    )
    greeter = cluster.node("greeter").fail(503, "overloaded")
    for _ in range(4):
        status, body = await welcome(cluster)
        assert (status, body["id"]) == (503, "greeter")  # the greeter's own answer
    status, body = await welcome(cluster)  # open: refused by the frontend's client at once
    assert (status, body["id"]) == (503, errors.CLIENT_ID)
    assert "open" in str(body["detail"])
    greeter.heal()
    status, body = await welcome(cluster)  # still open, though the greeter is well again
    assert (status, body["id"]) == (503, errors.CLIENT_ID)
    await asyncio.sleep(0.6)  # open_for: then one probe goes through, succeeds, and closes it
    assert await welcome(cluster) == (200, {"message": "Hello Ada"})
    assert await welcome(cluster) == (200, {"message": "Hello Ada"})


async def test_a_killed_greeter_is_gone_until_restarted(cluster_of: StartCluster) -> None:
    cluster = await cluster_of(greeter_app, frontend_app)
    greeter = cluster.node("greeter")
    await greeter.kill()
    status, body = await welcome(cluster)
    assert status == 503
    assert body["id"] == errors.CLIENT_ID
    assert await cluster.registry.get_service("greeter") == []
    await greeter.restart()
    assert await welcome(cluster) == (200, {"message": "Hello Ada"})


class Echo(BaseModel):
    text: str


def short_lived_app(ttl: float) -> FastAPI:
    """A service whose registration lives ``ttl`` seconds past its last heartbeat."""
    service = Service("short-lived", register_ttl=ttl, register_interval=ttl / 4)
    api = MicroRouter("Echo")

    @api.rpc()
    async def echo(req: Echo) -> Echo:
        return req

    app = FastAPI(lifespan=service.lifespan)
    app.include_router(api)
    return app


async def test_a_crashed_node_stays_registered_and_refuses_until_its_ttl_runs_out(
    cluster_of: StartCluster,
) -> None:
    cluster = await cluster_of(short_lived_app(ttl=1.5))
    node = cluster.node("short-lived")
    node_id = node.service.node.id  # type: ignore[union-attr]
    removed: list[str] = []

    async def watch() -> None:
        async for event in cluster.registry.watch("short-lived"):
            if event.type is EventType.DELETE:
                removed.extend(n.id for n in event.service.nodes)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0)  # watching before the crash
    try:
        await node.crash()
        crashed_at = time.monotonic()
        [record] = await cluster.registry.get_service("short-lived")
        assert [n.id for n in record.nodes] == [node_id]  # nobody deregistered it
        assert removed == []
        with pytest.raises(errors.ConnectionFailed, match="refused"):
            await cluster.client.call("short-lived", "Echo.Echo", {"text": "hi"})
        await until(lambda: removed == [node_id], "the registration to expire", timeout=10)
        assert time.monotonic() - crashed_at < 5  # its TTL of 1.5 s, not the default 30 s
        assert await cluster.registry.get_service("short-lived") == []
        await node.restart()
        reply = await cluster.client.call("short-lived", "Echo.Echo", {"text": "hi"})
        assert reply == {"text": "hi"}
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def test_a_port_taken_before_the_greeter_binds_it_is_traded_for_another(
    micro_cluster: StartCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen on CI: the port a node was given was taken by somebody else before uvicorn bound
    it, and uvicorn exited the test. The node binds its socket itself, and takes another."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        given = iter([taken])
        monkeypatch.setattr(
            "asgi_micro.testing.cluster.free_port",
            lambda host="127.0.0.1": next(given, 0) or free_port(host),
        )
        cluster = await micro_cluster(greeter_app, frontend_app, local=False)
        greeter = cluster.node("greeter")
        assert greeter.address != f"127.0.0.1:{taken}"
        assert greeter.service.address == greeter.address
        assert await welcome(cluster) == (200, {"message": "Hello Ada"})
        address = greeter.address
        await greeter.restart()  # a restart keeps its address
        assert greeter.address == address
        assert await welcome(cluster) == (200, {"message": "Hello Ada"})


class Signup(BaseModel):
    name: str


def signup_app() -> FastAPI:
    service = Service("signup")
    api = MicroRouter("Signup")

    @api.rpc()
    async def register(req: Signup) -> Signup:
        await service.publish("user.created", req)
        return req

    app = FastAPI(lifespan=service.lifespan)
    app.include_router(api)
    return app


async def test_published_events_are_captured(
    micro_cluster: StartCluster, micro_events: Callable[[Cluster, str], Awaitable[Events]]
) -> None:
    cluster = await micro_cluster(signup_app())
    events = await micro_events(cluster, "user.created")
    await cluster.client.call("signup", "Signup.Register", {"name": "Ada"})
    [event] = await events.wait(1)
    assert (event.topic, event.source, event.body) == ("user.created", "signup", b'{"name":"Ada"}')


async def test_the_service_of_an_app_is_found_or_asked_for() -> None:
    assert service_of_app(greeter_app).name == "greeter"
    assert service_of_app(frontend_app).name == "frontend"
    with pytest.raises(TypeError, match=r"pass it as \(app, service\)"):
        service_of_app(FastAPI())
