"""``Session`` resolves without FastAPI: on the HTTP fast path, over gRPC, for a stream of
replies that it outlives, and for an event subscriber; closed once each call is over."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
from sqlmodel import col, select

from asgi_micro import MicroRouter
from asgi_micro.data import Session
from asgi_micro.router import MicroRoute
from tests.data.conftest import Backend
from tests.data.inventory import Item, ItemId, ItemIn, inventory, router
from tests.data.test_service import sessions_closed
from tests.helpers import free_port, serve, until

watch = MicroRouter("Watch")


@watch.rpc()
async def cheaper(req: ItemId, session: Session) -> AsyncIterator[Item]:
    """Items up to the price of item ``req.id``, one by one, on the one session."""
    limit = await session.get(Item, req.id)
    assert limit is not None
    rows = await session.exec(
        select(Item).where(col(Item.price) <= limit.price).order_by(col(Item.id))
    )
    for row in rows:
        yield row
        # the session is still open between replies
        assert (await session.get(Item, row.id)) is not None


async def test_session_on_the_fast_path_over_grpc_and_for_events(backend: Backend) -> None:
    database = backend.database()
    port = free_port()
    app, service = inventory(database, address=f"127.0.0.1:{port}")
    app.include_router(watch)
    routes = {r.name: r for r in router.routes if isinstance(r, MicroRoute)}
    assert routes["Items.Create"].fast
    assert routes["Items.Get"].fast
    seen: list[str] = []

    @service.subscribe("item.priced")
    async def on_priced(event: ItemIn, session: Session) -> None:
        session.add(Item.model_validate(event))
        await session.commit()
        seen.append(event.name)

    async with (
        serve(app, port=port) as address,
        httpx.AsyncClient(base_url=f"http://{address}", trust_env=False) as http,
    ):
        await service.wait_registered()
        assert service.grpc_server is not None
        assert not service.grpc_server.schema.skipped  # every RPC is served over gRPC
        client = service.client
        fast = await http.post("/items/create", json={"name": "fig", "price": 2.0})
        grpc_created = await client.call(
            "inventory", "Items.Create", {"name": "kiwi", "price": 1.5}, transport="grpc"
        )
        grpc_got = await client.call("inventory", "Items.Get", {"id": 1}, transport="grpc")
        listed = await client.call("inventory", "Items.List", {}, transport="grpc")
        await service.publish("item.priced", ItemIn(name="plum", price=0.5))
        await until(lambda: seen == ["plum"], "the event to be handled", timeout=10.0)
        streamed: list[Any] = [
            reply async for reply in client.stream("inventory", "Watch.Cheaper", {"id": 1})
        ]
        await sessions_closed(database)
    await database.stop()  # a Database given to a Service is the caller's to stop
    assert fast.json() == {"id": 1, "name": "fig", "price": 2.0}
    assert grpc_created == {"id": 2, "name": "kiwi", "price": 1.5}
    assert grpc_got == fast.json()
    assert [item["name"] for item in listed["items"]] == ["fig", "kiwi"]
    assert [item["name"] for item in streamed] == ["fig", "kiwi", "plum"]
