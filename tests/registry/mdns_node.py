"""One node of a service in a process of its own, for the multi-process mDNS tests.

``python -m tests.registry.mdns_node NAME NODE_ID ADDRESS TTL HEARTBEAT`` registers the node
(mDNS opens on the interfaces its address implies), prints ``registered <interfaces>``, registers
again every HEARTBEAT seconds, and on a line on stdin (or its end) deregisters and exits.
"""

from __future__ import annotations

import asyncio
import os
import sys

from asgi_micro.registry import Node, Service
from asgi_micro.registry.mdns import MDNSRegistry


async def heartbeat(registry: MDNSRegistry, service: Service, ttl: float, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        await registry.register(service, ttl=ttl)


async def main(name: str, node_id: str, address: str, ttl: float, every: float) -> None:
    service = Service(name=name, version="1.0.0", nodes=[Node(id=node_id, address=address)])
    async with MDNSRegistry.from_url(os.environ["MICRO_REGISTRY"]) as registry:
        await registry.register(service, ttl=ttl)
        print("registered", ",".join(registry.interfaces or []), flush=True)
        beating = asyncio.create_task(heartbeat(registry, service, ttl, every))
        await asyncio.to_thread(sys.stdin.readline)
        beating.cancel()
        await registry.deregister(service)


if __name__ == "__main__":
    name, node_id, address, ttl, every = sys.argv[1:]
    asyncio.run(main(name, node_id, address, float(ttl), float(every)))
