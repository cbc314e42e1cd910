"""A service's sync: chosen by URL, a dependency of handlers, its leases released on stop."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from asgi_micro import Service
from asgi_micro.fastapi import Sync
from asgi_micro.sync import LockTimeout
from asgi_micro.sync.store import StoreSync
from tests.helpers import serve


async def test_a_handler_locks_and_the_service_releases_on_stop(tmp_path: Path) -> None:
    service = Service(
        f"locker-{uuid.uuid4().hex[:8]}",
        registry="memory://",
        store=f"sqlite:///{tmp_path}/store.db",
        broker="memory://",
        sync="store://",
        grpc=False,
    )
    assert isinstance(service.sync, StoreSync)
    app = FastAPI(lifespan=service.lifespan)
    name = f"orders/{uuid.uuid4().hex[:8]}"

    @app.post("/hold")
    async def hold(sync: Sync) -> dict[str, int]:
        lease = await sync.acquire(name, ttl=30)  # held past the request, until the stop
        return {"token": lease.token}

    async with serve(app) as address, httpx.AsyncClient(base_url=f"http://{address}") as http:
        first = (await http.post("/hold")).json()["token"]
        other = StoreSync.from_url(f"sqlite:///{tmp_path}/store.db")
        async with other:
            with pytest.raises(LockTimeout):
                async with other.lock(name, ttl=5, wait=0):
                    pass
    # Stopped: the service released the lease, and the next holder's token is higher.
    async with other, other.lock(name, ttl=5, wait=0) as lease:
        assert lease.token > first
