"""``Catalogue``: the registry's endpoints, current, and a change told once, not per heartbeat."""

from __future__ import annotations

import asyncio
import uuid

from asgi_micro.gateway.catalogue import Catalogue, merged
from asgi_micro.registry import Endpoint, Node
from asgi_micro.registry import Service as ServiceRecord
from asgi_micro.registry.memory import MemoryRegistry
from tests.helpers import until


def record(name: str, version: str, *endpoints: str, node: str = "n1") -> ServiceRecord:
    return ServiceRecord(
        name,
        version,
        endpoints=[Endpoint(e, metadata={"kind": "rpc", "v": version}) for e in endpoints],
        nodes=[Node(f"{name}-{node}", "127.0.0.1:1")],
    )


async def test_follows_services_and_tells_only_real_changes() -> None:
    registry = MemoryRegistry()
    name = f"svc-{uuid.uuid4().hex[:8]}"
    changes = 0

    async def changed() -> None:
        nonlocal changes
        changes += 1

    await registry.register(record("before", "1", "B.Run"))
    catalogue = Catalogue(registry, on_change=changed, settle=0.05)
    await catalogue.start()
    try:
        assert set(catalogue.endpoints) == {"before"}  # what was there at the start
        assert changes == 1

        await registry.register(record(name, "1.0.0", "A.One"))
        await until(lambda: name in catalogue.endpoints, "the new service")
        assert changes == 2
        for _ in range(3):  # heartbeats: the same record again
            await registry.register(record(name, "1.0.0", "A.One"))
        await asyncio.sleep(0.3)
        assert changes == 2

        await registry.deregister(record(name, "1.0.0", "A.One"))
        await until(lambda: name not in catalogue.endpoints, "the service gone")
        assert changes == 3
    finally:
        await catalogue.stop()


def test_the_newest_version_with_live_nodes_describes_an_endpoint() -> None:
    old = record("s", "1.9.2", "A.One", "A.Old")
    new = record("s", "1.10.0", "A.One", "A.New")
    gone = ServiceRecord("s", "2.0.0", endpoints=[Endpoint("A.Ghost")], nodes=[])
    endpoints = merged([old, new, gone])
    assert set(endpoints) == {"A.One", "A.Old", "A.New"}
    assert endpoints["A.One"].metadata["v"] == "1.10.0"
