"""mDNS that cannot work says why: an interface that cannot join the multicast group fails the
service's start with the interface and the alternative named, and a lookup that finds nothing
names the registry asked and the usual causes."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI

from asgi_micro import Service
from asgi_micro.errors import ServiceUnavailable
from asgi_micro.registry.mdns import MDNSRegistry
from tests.helpers import IN_CI, free_port, mdns, mdns_domain

ROOT = Path(__file__).resolve().parents[2]
ABSENT = "10.254.253.77"  # in no test network: an address no interface of this machine has
ALTERNATIVE = "MICRO_REGISTRY=etcd://host:2379 or MICRO_REGISTRY=nats://host:4222"


def _not_here(address: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return  # no interface has it
    pytest.skip(f"{address} is an address of this machine")


async def test_an_address_of_no_interface_fails_the_start_and_names_it() -> None:
    _not_here(ABSENT)
    registry = MDNSRegistry(interfaces=[ABSENT], domain=mdns_domain())
    with pytest.raises(ServiceUnavailable) as raised:
        await registry.start()
    message = str(raised.value)
    assert f"on interface {ABSENT}" in message
    assert "no interface of this machine has that address" in message
    assert ALTERNATIVE in message
    await registry.stop()


async def test_a_service_bound_to_it_fails_at_start_with_that_message() -> None:
    _not_here(ABSENT)
    service = Service(
        f"s-{uuid.uuid4().hex[:8]}",
        registry=f"mdns://?interfaces={ABSENT}&domain={mdns_domain()}",
        address=f"127.0.0.1:{free_port()}",
        grpc=False,
    )
    app = FastAPI(lifespan=service.lifespan)
    expected = f"multicast group 224.0.0.251 on interface {ABSENT}"
    with pytest.raises(ServiceUnavailable, match=expected):
        async with service.lifespan(app):
            pass


async def test_a_lookup_that_finds_nothing_names_the_registry_and_the_causes() -> None:
    registry = mdns(lookup_timeout=0.2)
    service = Service(f"caller-{uuid.uuid4().hex[:8]}", registry=registry, grpc=False)
    async with registry:
        with pytest.raises(ServiceUnavailable) as raised:
            await service.client.call(f"absent-{uuid.uuid4().hex[:8]}", "X.Y", {})
        await service.client.aclose()
    message = str(raised.value)
    assert "no nodes found in the registry mdns://?domain=" in message
    assert "loopback only" in message
    assert f"mDNS domain ({mdns_domain()!r})" in message
    assert ALTERNATIVE in message


async def test_other_registries_name_themselves_without_mdns_advice() -> None:
    service = Service(f"caller-{uuid.uuid4().hex[:8]}", registry="memory://", grpc=False)
    async with service.registry:
        with pytest.raises(ServiceUnavailable) as raised:
            await service.client.call(f"absent-{uuid.uuid4().hex[:8]}", "X.Y", {})
        await service.client.aclose()
    assert str(raised.value).endswith("no nodes found in the registry memory://")


# -- an interface with multicast off, in a network namespace of the test's own -----------------

_PROBE = """
import asyncio, sys
from asgi_micro.errors import ServiceUnavailable
from asgi_micro.registry.mdns import MDNSRegistry

async def main() -> None:
    registry = MDNSRegistry(interfaces=[sys.argv[1]], domain=sys.argv[2])
    try:
        await registry.start()
    except ServiceUnavailable as exc:
        print("refused:", exc)
    else:
        print("opened:", registry.joined)
    finally:
        await registry.stop()

asyncio.run(main())
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def namespace() -> Iterator[str]:
    """A network namespace with a veth pair, 198.18.42.1 on v0 with multicast off (a dummy
    interface would do too, where the kernel has that module)."""
    if shutil.which("ip") is None or os.geteuid() != 0:
        if IN_CI:
            pytest.fail("the multicast-off test needs root and iproute2 in CI")
        pytest.skip("needs root and iproute2")
    name = f"amd{uuid.uuid4().hex[:10]}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        _ip("-n", name, "addr", "add", "198.18.42.1/24", "dev", "v0")
        _ip("-n", name, "link", "set", "v0", "multicast", "off")
        for link in ("v0", "v1", "lo"):
            _ip("-n", name, "link", "set", link, "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


async def _probe_in(namespace: str, address: str) -> str:
    child = await asyncio.create_subprocess_exec(
        *("ip", "netns", "exec", namespace, sys.executable, "-c", _PROBE, address, mdns_domain()),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(child.communicate(), timeout=60)
    assert child.returncode == 0, err.decode()
    return out.decode()


async def test_an_interface_with_multicast_off_is_refused_by_name(namespace: str) -> None:
    said = await _probe_in(namespace, "198.18.42.1")
    assert said.startswith("refused:"), said
    assert "on interface 198.18.42.1 (v0): multicast is off on v0" in said
    assert "ip link set v0 multicast on" in said
    assert ALTERNATIVE in said


async def test_loopback_in_that_namespace_still_opens(namespace: str) -> None:
    said = await _probe_in(namespace, "127.0.0.1")
    assert said.strip() == "opened: ['127.0.0.1']"
