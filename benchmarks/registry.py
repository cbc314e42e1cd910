"""Discovery figures per registry, measured in one run: how soon a watcher sees a new node,
how soon a deregistered node and a node whose process died (no heartbeat) are gone, and what a
lookup costs, cached (the client's ``RegistryCache``) and straight from the registry.

    python benchmarks/registry.py [--rounds 9] [--registries memory mdns etcd nats]

Each registry has two handles, as two processes would: one registers, the other watches and
looks up (memory has one object). ``etcd`` is an etcd of this run's own on free loopback ports
(Debian's ``etcd-server``); ``nats`` uses the server on 127.0.0.1:4222 with a bucket of this
run's own, deleted afterwards; ``mdns`` a domain of its own on loopback. Each figure is the
median over ``--rounds`` nodes; "died" registers with a 2 s TTL and never heartbeats, so it
reads as TTL + detection delay (etcd's leases are whole seconds, mDNS records expire by TTL).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asgi_micro.client.cache import RegistryCache
from asgi_micro.registry import EventType, Node, Registry, Service, from_url

DIED_TTL = 2.0
LOOKUPS = 2_000


@contextlib.asynccontextmanager
async def pair(kind: str) -> AsyncIterator[tuple[Registry, Registry]]:
    """A registering handle and an observing one on the registry ``kind``."""
    if kind == "memory":
        registry = from_url("memory://")
        async with registry:
            yield registry, registry
        return
    if kind == "mdns":
        url = f"mdns://127.0.0.1?domain=b{secrets.token_hex(4)}"
        async with from_url(url) as registry, from_url(url) as observer:
            yield registry, observer
        return
    if kind == "etcd":
        from tests.etcd import etcd_server

        with etcd_server() as client_url:
            url = client_url.replace("http://", "etcd://") + f"?prefix=/bench-{uuid.uuid4().hex}/"
            async with from_url(url) as registry, from_url(url) as observer:
                yield registry, observer
        return
    if kind == "nats":
        import nats

        bucket = f"bench_{uuid.uuid4().hex[:12]}"
        url = f"nats://127.0.0.1:4222?bucket={bucket}"
        try:
            async with from_url(url) as registry, from_url(url) as observer:
                yield registry, observer
        finally:
            nc = await nats.connect("nats://127.0.0.1:4222")
            with contextlib.suppress(Exception):
                await nc.jetstream().delete_key_value(bucket)
            await nc.close()
        return
    raise SystemExit(f"unknown registry {kind!r}")


def a_node(name: str) -> Service:
    return Service(
        name=name, version="1.0.0", nodes=[Node(id=uuid.uuid4().hex, address="127.0.0.1:1")]
    )


async def time_until(
    observer: Registry, name: str, wanted: EventType, change: Callable[[], object]
) -> float:
    """Seconds from ``change()`` until ``observer``'s watch reports ``wanted`` for ``name``."""
    async with contextlib.aclosing(observer.watch(name)) as events:
        first = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0.3)  # the watch is in place (the first advance subscribed)
        started = time.perf_counter()
        result = change()
        if asyncio.iscoroutine(result):
            await result
        event = await asyncio.wait_for(first, timeout=30)
        while event.type is not wanted:
            event = await asyncio.wait_for(anext(events), timeout=30)
        return time.perf_counter() - started


async def measure(kind: str, rounds: int) -> dict[str, float]:
    visible, gone, died, cached, direct = [], [], [], [], []
    async with pair(kind) as (registry, observer):
        for _ in range(rounds):
            service = a_node(f"bench-{uuid.uuid4().hex[:8]}")
            visible.append(
                await time_until(
                    observer,
                    service.name,
                    EventType.CREATE,
                    lambda s=service: registry.register(s, ttl=30),
                )
            )
            gone.append(
                await time_until(
                    observer,
                    service.name,
                    EventType.DELETE,
                    lambda s=service: registry.deregister(s),
                )
            )
        for _ in range(max(3, rounds // 3)):  # each waits a whole TTL
            service = a_node(f"bench-{uuid.uuid4().hex[:8]}")
            died.append(
                await time_until(
                    observer,
                    service.name,
                    EventType.DELETE,
                    lambda s=service: registry.register(s, ttl=DIED_TTL),
                )
            )
        service = a_node(f"bench-{uuid.uuid4().hex[:8]}")
        await registry.register(service, ttl=60)
        cache = RegistryCache(observer)
        try:
            for _ in range(100):
                if await cache.get(service.name):
                    break
                await asyncio.sleep(0.05)
            for _ in range(rounds):
                started = time.perf_counter()
                for _ in range(LOOKUPS):
                    await cache.get(service.name)
                cached.append((time.perf_counter() - started) / LOOKUPS)
                started = time.perf_counter()
                for _ in range(20):
                    await observer.get_service(service.name)
                direct.append((time.perf_counter() - started) / 20)
        finally:
            await cache.aclose()
            await registry.deregister(service)
    return {
        "visible_ms": statistics.median(visible) * 1e3,
        "deregistered_ms": statistics.median(gone) * 1e3,
        "died_s": statistics.median(died),
        "cached_us": statistics.median(cached) * 1e6,
        "lookup_us": statistics.median(direct) * 1e6,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--registries", nargs="+", default=["memory", "mdns", "etcd", "nats"])
    args = parser.parse_args()
    print(
        f"{'registry':<8} {'new node seen':>14} {'deregistered':>13} "
        f"{f'died (ttl {DIED_TTL:g} s)':>16} {'cached lookup':>14} {'registry lookup':>16}"
    )
    for kind in args.registries:
        figures = await measure(kind, args.rounds)
        print(
            f"{kind:<8} {figures['visible_ms']:>11.1f} ms {figures['deregistered_ms']:>10.1f} ms "
            f"{figures['died_s']:>14.2f} s {figures['cached_us']:>11.2f} us "
            f"{figures['lookup_us']:>13.1f} us",
            flush=True,
        )


if __name__ == "__main__":
    asyncio.run(main())
