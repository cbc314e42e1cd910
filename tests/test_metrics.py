"""Metrics at ``/_micro/metrics``: after known traffic a scrape, read with prometheus-client's
own parser, has the exact counts, on the server and the client side, for HTTP, gRPC, plain
routes and events; OpenMetrics when asked; each service its own; off with
``MICRO_METRICS=off``; and the same exact counts summed over two uvicorn workers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from asgi_micro import MicroRouter, Service, errors
from asgi_micro.registry.memory import MemoryRegistry
from tests.helpers import eventually, free_port, serve, until


class Hello(BaseModel):
    name: str


def scraped(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


async def scrape(http: httpx.AsyncClient, address: str, **headers: str) -> str:
    response = await http.get(f"http://{address}/_micro/metrics", headers=headers)
    assert response.status_code == 200, response.text
    return response.text


def greeter(name: str, registry: MemoryRegistry, port: int, **options: Any) -> FastAPI:
    service = Service(
        name,
        registry=registry,
        store="memory://",
        broker=f"memory://{uuid.uuid4().hex}",
        address=f"127.0.0.1:{port}",
        grpc_address=f"127.0.0.1:{free_port()}",
        **options,
    )
    router = MicroRouter("Greeter")

    @router.rpc()
    async def hello(req: Hello) -> Hello:
        return Hello(name=f"Hello {req.name}")

    @router.rpc()
    async def missing(req: Hello) -> Hello:
        raise errors.NotFound(f"no {req.name}")

    @router.rpc()
    async def crash(req: Hello) -> Hello:
        raise RuntimeError("a bug")

    app = FastAPI(lifespan=service.lifespan)
    app.include_router(router)

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item": item_id}

    app.state.service = service
    return app


@pytest.fixture
async def cluster() -> AsyncIterator[tuple[str, str, Service, httpx.AsyncClient]]:
    """A greeter served on uvicorn, and a caller that finds it in the same registry."""
    registry = MemoryRegistry()
    name = f"greeter-{uuid.uuid4().hex[:8]}"
    port = free_port()
    caller = Service("caller", registry=registry, store="memory://", broker="memory://")
    async with (
        serve(greeter(name, registry, port), port=port) as address,
        caller,
        httpx.AsyncClient() as http,
    ):
        yield name, address, caller, http


async def test_a_scrape_after_known_traffic_has_the_exact_counts(
    cluster: tuple[str, str, Service, httpx.AsyncClient],
) -> None:
    name, address, caller, http = cluster
    for _ in range(5):
        await caller.client.call(name, "Greeter.Hello", {"name": "Ada"})
    for _ in range(3):
        await caller.client.call(name, "Greeter.Hello", {"name": "Bo"}, transport="grpc")
    for _ in range(2):
        with pytest.raises(errors.NotFound):
            await caller.client.call(name, "Greeter.Missing", {"name": "x"})
    with pytest.raises(errors.InternalServerError):
        await caller.client.call(name, "Greeter.Crash", {"name": "x"}, retries=0)
    with pytest.raises(errors.InternalServerError):
        await caller.client.call(name, "Greeter.Crash", {"name": "x"}, retries=0, transport="grpc")
    for item in range(4):
        assert (await http.get(f"http://{address}/items/{item}")).status_code == 200
    assert (await http.get(f"http://{address}/items/nope")).status_code == 400

    server = await scrape(http, address)
    calls = "rpc_server_call_duration_seconds_count"
    ok = {"rpc_response_status_code": "OK", "error_type": ""}
    assert scraped(server, calls, rpc_system_name="http", rpc_method="Greeter.Hello", **ok) == 5
    assert scraped(server, calls, rpc_system_name="grpc", rpc_method="Greeter.Hello", **ok) == 3
    assert (
        scraped(
            server,
            calls,
            rpc_method="Greeter.Missing",
            rpc_response_status_code="NOT_FOUND",
            error_type="404",
        )
        == 2
    )
    crashed = {"rpc_method": "Greeter.Crash", "rpc_response_status_code": "INTERNAL"}
    assert scraped(server, calls, rpc_system_name="http", error_type="RuntimeError", **crashed) == 1
    assert scraped(server, calls, rpc_system_name="grpc", error_type="RuntimeError", **crashed) == 1
    route = {"rpc_system_name": "http", "rpc_method": "GET /items/{item_id}"}
    assert scraped(server, calls, **route, **ok) == 4  # the template, never the raw path
    # FastAPI's validation error, which the middleware then sends as Go Micro's 400.
    assert scraped(server, calls, **route, error_type="422") == 1
    assert scraped(server, calls) == 5 + 3 + 2 + 2 + 4 + 1  # no other series, no scrapes
    assert scraped(server, "rpc_server_call_duration_seconds_bucket", le="+Inf") == 17
    assert scraped(server, "rpc_server_call_duration_seconds_sum") > 0
    assert scraped(server, "micro_server_in_flight_calls") == 0
    assert scraped(server, "micro_draining") == 0

    client = caller.metrics.expose()[0].decode()
    outgoing = "rpc_client_call_duration_seconds_count"
    assert scraped(client, outgoing, rpc_service=name, rpc_method="Greeter.Hello", **ok) == 8
    assert scraped(client, outgoing, rpc_system_name="grpc", **ok) == 3
    assert scraped(client, outgoing, rpc_method="Greeter.Missing", error_type="404") == 2
    assert scraped(client, outgoing, rpc_method="Greeter.Crash", error_type="500") == 2
    assert scraped(client, outgoing) == 12
    # A call looks the service up for its route, then for its node: the first asks.
    lookups = "micro_registry_cache_lookups_total"
    assert scraped(client, lookups, result="miss") == 1
    assert scraped(client, lookups, result="hit") == 2 * 12 - 1

    async with caller.http() as by_name:
        for item in (7, 8):
            assert (await by_name.get(f"http://{name}/items/{item}")).json() == {"item": item}
    client = caller.metrics.expose()[0].decode()
    assert scraped(client, outgoing, rpc_method="GET", rpc_service=name, **ok) == 2
    assert "/items/" not in client  # a raw path is never a label


async def test_events_count_publishes_handling_and_lag() -> None:
    broker = f"memory://{uuid.uuid4().hex}"
    topic = f"user.created.{uuid.uuid4().hex[:8]}"
    service = Service("users", registry=MemoryRegistry(), store="memory://", broker=broker)
    handled: list[str] = []

    @service.subscribe(topic, queue="welcome")
    async def welcome(user: Hello) -> None:
        if user.name == "bad":
            raise errors.Conflict("not now")
        handled.append(user.name)

    async with service:
        for number in range(6):
            await service.publish(topic, Hello(name=f"user-{number}"))
        await until(lambda: len(handled) == 6, "six events handled")
        text = service.metrics.expose()[0].decode()
    group = {"messaging_system": "memory", "messaging_destination_name": topic}
    published = "messaging_client_operation_duration_seconds_count"
    assert scraped(text, published, messaging_operation_name="publish", error_type="", **group) == 6
    processed = "messaging_process_duration_seconds_count"
    consumed = {**group, "messaging_consumer_group_name": "welcome"}
    assert scraped(text, processed, error_type="", **consumed) == 6
    assert scraped(text, "micro_event_lag_seconds_count", **consumed) == 6
    assert 0 <= scraped(text, "micro_event_lag_seconds_sum", **consumed) < 60
    assert scraped(text, "rpc_server_call_duration_seconds_count") == 0  # events are not RPCs


async def test_a_failed_event_counts_its_error() -> None:
    broker = f"memory://{uuid.uuid4().hex}"
    topic = f"order.{uuid.uuid4().hex[:8]}"
    service = Service("orders", registry=MemoryRegistry(), store="memory://", broker=broker)
    tries: list[int] = []

    @service.subscribe(topic, max_deliveries=1)
    async def refuse(order: Hello) -> None:
        tries.append(1)
        raise errors.Conflict("not now")

    processed = "messaging_process_duration_seconds_count"

    def failures() -> float:
        text = service.metrics.expose()[0].decode()
        return scraped(text, processed, messaging_destination_name=topic, error_type="409")

    async with service:
        await service.publish(topic, {"name": "x"})
        await until(failures, "the failure counted")
        text = service.metrics.expose()[0].decode()
    assert tries == [1]
    assert scraped(text, processed, messaging_destination_name=topic, error_type="409") == 1
    assert scraped(text, processed, messaging_destination_name=topic, error_type="") == 0


async def test_openmetrics_when_the_scraper_asks(
    cluster: tuple[str, str, Service, httpx.AsyncClient],
) -> None:
    name, address, caller, http = cluster
    await caller.client.call(name, "Greeter.Hello", {"name": "Ada"})
    response = await http.get(
        f"http://{address}/_micro/metrics",
        headers={"accept": "application/openmetrics-text; version=1.0.0"},
    )
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    families = {family.name: family for family in openmetrics_families(response.text)}
    duration = families["rpc_server_call_duration_seconds"]
    assert duration.unit == "seconds"
    [count] = [s for s in duration.samples if s.name.endswith("_count")]
    assert count.value == 1
    plain = await http.get(f"http://{address}/_micro/metrics")
    assert plain.headers["content-type"].startswith("text/plain")


async def test_two_services_in_one_process_keep_their_own_metrics() -> None:
    registry = MemoryRegistry()
    first_port, second_port = free_port(), free_port()
    first = greeter(f"first-{uuid.uuid4().hex[:6]}", registry, first_port)
    second = greeter(f"second-{uuid.uuid4().hex[:6]}", registry, second_port)
    async with (
        serve(first, port=first_port) as first_address,
        serve(second, port=second_port) as second_address,
        httpx.AsyncClient() as http,
    ):
        for _ in range(3):
            await http.post(f"http://{first_address}/greeter/hello", json={"name": "a"})
        await http.post(f"http://{second_address}/greeter/hello", json={"name": "b"})
        counts = [
            scraped(await scrape(http, address), "rpc_server_call_duration_seconds_count")
            for address in (first_address, second_address)
        ]
    assert counts == [3, 1]


async def test_metrics_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICRO_METRICS", "off")
    port = free_port()
    app = greeter(f"quiet-{uuid.uuid4().hex[:6]}", MemoryRegistry(), port)
    service: Service = app.state.service
    assert not service.metrics.on
    assert service.pipeline.observers == ()
    async with serve(app, port=port) as address, httpx.AsyncClient() as http:
        assert (await http.post(f"http://{address}/greeter/hello", json={"name": "a"})).is_success
        response = await http.get(f"http://{address}/_micro/metrics")
    assert response.status_code == 404
    assert response.json()["code"] == 404


def test_metrics_are_on_by_default_and_outside_auth() -> None:
    service = Service("plain", registry=MemoryRegistry(), store="memory://", auth="jwt://")
    assert service.metrics.on
    # An observer, outside every wrapper (auth's refusals are counted), fast paths kept.
    assert service.pipeline.observers == (service.metrics.served,)
    assert service.pipeline.wrappers == (service.guard,)
    assert not Service("off", registry=MemoryRegistry(), metrics=False).metrics.on


WORKER_APP = """
import os
from fastapi import FastAPI
from pydantic import BaseModel
from asgi_micro import MicroRouter, Service

class Hello(BaseModel):
    name: str

class Worker(BaseModel):
    pid: int

service = Service("workers", registry="memory://", store="memory://", broker="memory://",
                  grpc=False)
router = MicroRouter("Greeter")

@router.rpc()
async def hello(req: Hello) -> Worker:
    return Worker(pid=os.getpid())

app = FastAPI(lifespan=service.lifespan)
app.include_router(router)
"""


@pytest.mark.slow
async def test_two_uvicorn_workers_sum_to_the_exact_counts(tmp_path: Path) -> None:
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    (tmp_path / "worker_app.py").write_text(textwrap.dedent(WORKER_APP))
    port = free_port()
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "MICRO_ADDRESS": f"127.0.0.1:{port}",
    }
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "uvicorn", "worker_app:app", "--app-dir", str(tmp_path)),
            *("--host", "127.0.0.1", "--port", str(port), "--workers", "2"),
            *("--log-level", "warning"),
        ],
        env=env,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        pids: set[int] = set()
        calls = 0
        async with httpx.AsyncClient(timeout=10) as http:
            await eventually(lambda: _answers(http, f"{url}/livez"), timeout=90)
            # A connection of its own per call, so that the calls spread over the workers.
            while (len(pids) < 2 or calls < 40) and calls < 400:
                async with httpx.AsyncClient(timeout=10) as once:
                    response = await once.post(f"{url}/greeter/hello", json={"name": "a"})
                assert response.status_code == 200
                pids.add(response.json()["pid"])
                calls += 1
            assert len(pids) == 2, "the calls all went to one worker"
            for _ in range(6):  # whichever worker answers the scrape, it has everyone's
                async with httpx.AsyncClient(timeout=10) as once:
                    text = await scrape(once, f"127.0.0.1:{port}")
                count = "rpc_server_call_duration_seconds_count"
                assert scraped(text, count, rpc_method="Greeter.Hello") == calls
                assert scraped(text, "rpc_server_call_duration_seconds_bucket", le="+Inf") == calls
                assert scraped(text, "micro_server_in_flight_calls") == 0
    finally:
        server.terminate()
        try:
            await asyncio.to_thread(server.wait, 30)
        except subprocess.TimeoutExpired:
            server.kill()
            await asyncio.to_thread(server.wait)


async def _answers(http: httpx.AsyncClient, url: str) -> bool:
    try:
        return (await http.get(url)).status_code == 200
    except httpx.HTTPError:
        return False
