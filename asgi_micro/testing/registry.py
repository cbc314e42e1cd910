"""The registry conformance suite: the same behaviour from every backend, whatever the URL.

A backend's tests subclass ``RegistryConformance`` and say how to open it::

    from asgi_micro.testing.registry import RegistryConformance


    class TestMyRegistry(RegistryConformance):
        @contextlib.asynccontextmanager
        async def pair(self) -> AsyncIterator[tuple[Registry, Registry]]:
            async with MyRegistry(URL) as registry, MyRegistry(URL) as observer:
                yield registry, observer

``pair`` yields two started handles on one backend, as two processes would have: the first
registers, the second looks up and watches (they may be the same object where the backend has
no other process, as with ``memory://``). Every record a test makes has a unique name, so
the suite runs beside other users of a shared server.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager

import pytest
import pytest_asyncio

from ..registry import Endpoint, EventType, Node, Registry, Service
from . import eventually, free_port

__all__ = ["RegistryConformance", "make_service", "node_ids", "unique"]


def make_service(name: str, *, version: str = "1.0.0", node_id: str | None = None) -> Service:
    return Service(
        name=name,
        version=version,
        metadata={"team": "core"},
        endpoints=[
            Endpoint(
                name="Greeter.Hello",
                request={"type": "object", "properties": {"name": {"type": "string"}}},
                response={"type": "object", "properties": {"message": {"type": "string"}}},
                metadata={"method": "POST", "path": "/greeter/hello", "kind": "rpc"},
            )
        ],
        nodes=[
            Node(
                id=node_id or f"{name}-{uuid.uuid4()}",
                address=f"127.0.0.1:{free_port()}",
                metadata={"zone": "a"},
            )
        ],
    )


def unique(prefix: str = "svc") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def node_ids(services: list[Service]) -> set[str]:
    return {node.id for service in services for node in service.nodes}


@pytest.mark.asyncio
class RegistryConformance:
    """Subclass it as ``Test...`` and implement ``pair``."""

    def pair(self) -> AbstractAsyncContextManager[tuple[Registry, Registry]]:
        """Two started handles on one backend: the first registers, the second looks up."""
        raise NotImplementedError(f"{type(self).__name__} must implement pair()")

    @pytest_asyncio.fixture
    async def registry_pair(self) -> AsyncIterator[tuple[Registry, Registry]]:
        async with self.pair() as pair:
            yield pair

    async def test_register_then_get(self, registry_pair: tuple[Registry, Registry]) -> None:
        registry, observer = registry_pair
        service = make_service(unique())
        await registry.register(service, ttl=30)

        found = await eventually(
            lambda: observer.get_service(service.name), message="service not found"
        )

        assert len(found) == 1
        record = found[0]
        assert (record.name, record.version) == (service.name, "1.0.0")
        assert record.metadata["team"] == "core"
        assert [node.id for node in record.nodes] == [service.nodes[0].id]
        assert record.nodes[0].address == service.nodes[0].address
        assert record.nodes[0].metadata["zone"] == "a"
        assert record.endpoints == service.endpoints
        await registry.deregister(service)

    async def test_unknown_service_is_empty(self, registry_pair: tuple[Registry, Registry]) -> None:
        _, observer = registry_pair
        assert await observer.get_service(unique("missing")) == []

    async def test_nodes_of_one_version_are_merged(
        self, registry_pair: tuple[Registry, Registry]
    ) -> None:
        registry, observer = registry_pair
        name = unique()
        first, second = make_service(name), make_service(name)
        await registry.register(first, ttl=30)
        await registry.register(second, ttl=30)
        expected = node_ids([first, second])

        async def both() -> list[Service]:
            found = await observer.get_service(name)
            return found if node_ids(found) == expected else []

        found = await eventually(both, message="both nodes not visible")
        assert len(found) == 1
        await registry.deregister(first)
        await registry.deregister(second)

    async def test_versions_are_separate_records(
        self, registry_pair: tuple[Registry, Registry]
    ) -> None:
        registry, observer = registry_pair
        name = unique()
        old, new = make_service(name, version="1.0.0"), make_service(name, version="2.0.0")
        await registry.register(old, ttl=30)
        await registry.register(new, ttl=30)

        async def two_versions() -> list[Service]:
            found = await observer.get_service(name)
            return found if len(found) == 2 else []

        found = await eventually(two_versions, message="two versions not visible")
        assert sorted(service.version for service in found) == ["1.0.0", "2.0.0"]
        await registry.deregister(old)
        await registry.deregister(new)

    async def test_deregister_removes_the_node(
        self, registry_pair: tuple[Registry, Registry]
    ) -> None:
        registry, observer = registry_pair
        service = make_service(unique())
        await registry.register(service, ttl=30)
        await eventually(lambda: observer.get_service(service.name))

        await registry.deregister(service)

        async def gone() -> bool:
            return await observer.get_service(service.name) == []

        await eventually(gone, timeout=2.0, message="deregistered node still listed")

    async def test_node_expires_without_heartbeat(
        self, registry_pair: tuple[Registry, Registry]
    ) -> None:
        registry, observer = registry_pair
        service = make_service(unique())
        await registry.register(service, ttl=1)
        await eventually(lambda: observer.get_service(service.name))

        async def gone() -> bool:
            return await observer.get_service(service.name) == []

        await eventually(gone, timeout=4.0, message="node outlived its TTL")

    async def test_heartbeat_keeps_the_node(self, registry_pair: tuple[Registry, Registry]) -> None:
        registry, observer = registry_pair
        service = make_service(unique())
        for _ in range(6):  # 3 s of heartbeats every 0.5 s with a 1.5 s TTL
            await registry.register(service, ttl=1.5)
            await asyncio.sleep(0.5)
        assert node_ids(await observer.get_service(service.name)) == {service.nodes[0].id}
        await registry.deregister(service)

    async def test_list_services(self, registry_pair: tuple[Registry, Registry]) -> None:
        registry, observer = registry_pair
        service = make_service(unique())
        await registry.register(service, ttl=30)

        async def listed() -> bool:
            return any(found.name == service.name for found in await observer.list_services())

        await eventually(listed, message="service not listed")
        await registry.deregister(service)

    async def test_watch_sees_create_and_delete(
        self, registry_pair: tuple[Registry, Registry]
    ) -> None:
        registry, observer = registry_pair
        service = make_service(unique())
        events = []

        async def collect() -> None:
            async with contextlib.aclosing(observer.watch(service.name)) as stream:
                async for event in stream:
                    events.append(event)
                    if event.type is EventType.DELETE:
                        return

        watcher = asyncio.create_task(collect())
        await asyncio.sleep(0.2)  # let the watch begin before the change
        await registry.register(service, ttl=30)
        await eventually(lambda: observer.get_service(service.name))
        await registry.deregister(service)
        await asyncio.wait_for(watcher, timeout=5)

        assert events[0].type is EventType.CREATE
        assert events[-1].type is EventType.DELETE
        assert all(event.service.name == service.name for event in events)
        assert events[0].service.nodes[0].id == service.nodes[0].id

    async def test_watch_sees_a_node_expire(self, registry_pair: tuple[Registry, Registry]) -> None:
        registry, observer = registry_pair
        service = make_service(unique())
        events: list[EventType] = []

        async def collect() -> None:
            async with contextlib.aclosing(observer.watch(service.name)) as stream:
                async for event in stream:
                    events.append(event.type)
                    if event.type is EventType.DELETE:
                        return

        watcher = asyncio.create_task(collect())
        await asyncio.sleep(0.2)
        await registry.register(service, ttl=1)  # and no heartbeat
        await asyncio.wait_for(watcher, timeout=6)
        assert events[0] is EventType.CREATE
        assert events[-1] is EventType.DELETE

    async def test_watch_filters_by_service(self, registry_pair: tuple[Registry, Registry]) -> None:
        registry, observer = registry_pair
        wanted, other = make_service(unique()), make_service(unique())
        seen: list[str] = []

        async def collect() -> None:
            async with contextlib.aclosing(observer.watch(wanted.name)) as stream:
                async for event in stream:
                    seen.append(event.service.name)
                    return

        watcher = asyncio.create_task(collect())
        await asyncio.sleep(0.2)
        await registry.register(other, ttl=30)
        await registry.register(wanted, ttl=30)
        await asyncio.wait_for(watcher, timeout=5)
        assert seen == [wanted.name]
        await registry.deregister(other)
        await registry.deregister(wanted)

    async def test_lifecycle_is_idempotent(self, registry_pair: tuple[Registry, Registry]) -> None:
        registry, _ = registry_pair
        await registry.start()
        await registry.start()
        service = make_service(unique())
        await registry.register(service, ttl=30)
        await registry.deregister(service)
        await registry.deregister(service)  # a second withdrawal is harmless
