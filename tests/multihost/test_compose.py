"""``docker-compose.yml`` works: it validates, and its application services, started as it
describes them (command, ``MICRO_*`` environment, health check), each on a host of its own
named after the service, make a working system with the engines on hosts of theirs.

Docker cannot pull images here, so the engines run from the machine's binaries on hosts named
as the file's engine services; the applications find them by those names, as in compose.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import yaml

from tests.helpers import IN_CI, eventually
from tests.multihost.engines import etcd_on, nats_on, postgres_on, redis_on, succeeds
from tests.multihost.harness import Driver, HostedServer, driver
from tests.multihost.network import Host, Network
from tests.processes import ROOT

pytestmark = pytest.mark.slow

COMPOSE_FILE = ROOT / "docker-compose.yml"


def compose() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    return services


def applications() -> dict[str, Any]:
    """The services built from this repository (the rest are engines' images)."""
    return {name: service for name, service in compose().items() if "build" in service}


def engine(name: str, host: Host, via: Driver) -> AbstractAsyncContextManager[str]:
    """The file's engine service ``name``, started on ``host`` from the machine's binary."""
    starters: dict[str, Callable[[], AbstractAsyncContextManager[str]]] = {
        "etcd": lambda: etcd_on(host, via=via),
        "nats": lambda: nats_on(host, via=via),
        "redis": lambda: redis_on(host),
        "postgres": lambda: postgres_on(
            host,
            user=compose()["postgres"]["environment"]["POSTGRES_USER"],
            database=compose()["postgres"]["environment"]["POSTGRES_DB"],
        ),
    }
    return starters[name]()


def test_the_compose_file_validates() -> None:
    if shutil.which("docker-compose") is not None:
        command = ["docker-compose", "-f", str(COMPOSE_FILE), "config", "--quiet"]
    elif subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        command = ["docker", "compose", "-f", str(COMPOSE_FILE), "config", "--quiet"]
    else:
        message = "neither docker-compose nor the docker compose plugin is installed"
        if IN_CI:
            pytest.fail(f"{message}; .ci/run must install docker-compose", pytrace=False)
        pytest.skip(message)
    checked = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr


def test_applications_are_configured_by_micro_variables_alone() -> None:
    services = compose()
    engines = {name for name in services if name not in applications()}
    assert engines == {"etcd", "nats", "postgres", "redis"}
    assert {"greeter-1", "greeter-2", "frontend"} <= set(applications())
    for name, service in applications().items():
        assert all(key.startswith("MICRO_") for key in service["environment"]), name
        assert service["healthcheck"]["test"][0] == "CMD", name
        assert set(service["depends_on"]) == engines, name


def as_run_here(host: Host, name: str, service: dict[str, Any], via: Driver) -> HostedServer:
    """The service's ``asgi-micro run APP OPTIONS`` command with its environment, on
    ``host``."""
    program, run, target, *options = service["command"]
    assert (program, run) == ("asgi-micro", "run"), service["command"]
    at = options.index("--port")
    port = int(options[at + 1])
    args = tuple(options[:at] + options[at + 2 :])
    return HostedServer(
        target, host=host, via=via, port=port, args=args, env=service["environment"]
    )


async def healthy(host: Host, service: dict[str, Any]) -> bool:
    """The file's health check passes on ``host`` (``python`` being this interpreter)."""
    _, program, *args = service["healthcheck"]["test"]
    return await succeeds(host, sys.executable if program == "python" else program, *args)


@contextlib.asynccontextmanager
async def system(net: Network) -> AsyncIterator[tuple[Driver, dict[str, HostedServer]]]:
    """Engines and applications of the compose file on hosts named after its services."""
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(driver(net.add("client")))
        services = compose()
        for name in services:
            if name not in applications():
                await stack.enter_async_context(engine(name, net.add(name), client))
        servers = {
            name: as_run_here(net.add(name), name, service, client)
            for name, service in applications().items()
        }
        for server in servers.values():
            stack.push_async_callback(server.close)
            await server.start()
        for name, server in servers.items():
            assert server.host is not None
            try:
                await eventually(
                    functools.partial(healthy, server.host, services[name]),
                    timeout=60.0,
                    interval=0.5,
                    message=f"{name}'s health check passing",
                )
            except AssertionError as exc:
                raise AssertionError(f"{exc}; its log:\n{server.output()[-3000:]}") from None
        yield client, servers


async def test_the_compose_system_answers_through_the_frontend(net: Network) -> None:
    async with system(net) as (client, servers):
        frontend = servers["frontend"]
        calls = await client.load([f"{frontend.url}/welcome/Ada"], count=60, seconds=30.0)
        assert [call.get("body") for call in calls] == [{"message": "Hello Ada"}] * 60, calls[:3]
        served = {
            name: (await server.stats())["requests"]
            for name, server in servers.items()
            if name.startswith("greeter")
        }
        assert sum(served.values()) == 60, served
        assert min(served.values()) >= 10, f"calls per greeter: {served}"
