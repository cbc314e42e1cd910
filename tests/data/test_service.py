"""A service's handlers create, read and list ``SQLModel`` rows over HTTP, plain routes and
RPCs alike, with the same code on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import httpx

from asgi_micro import errors
from asgi_micro.data import Database
from tests.data.conftest import Backend
from tests.data.inventory import Item, inventory
from tests.helpers import serve, until


async def sessions_closed(database: Database) -> None:
    """Every request's session goes back to the pool once its response is sent."""
    pool: Any = database.engine.pool
    await until(lambda: pool.checkedout() == 0, "the sessions to close", timeout=5.0)


async def test_plain_routes_create_read_and_list(backend: Backend) -> None:
    database = backend.database()
    app, _ = inventory(database, grpc=False)
    async with (
        serve(app) as address,
        httpx.AsyncClient(base_url=f"http://{address}", trust_env=False) as http,
    ):
        apple = await http.post("/items", json={"name": "apple", "price": 0.5})
        pear = await http.post("/items", json={"name": "pear", "price": 0.75})
        read = await http.get(f"/items/{apple.json()['id']}")
        listed = await http.get("/items")
        missing = await http.get("/items/999")
        invalid = await http.post("/items", json={"name": "plum", "price": -1})
        await sessions_closed(database)
    assert apple.status_code == 201
    assert apple.json() == {"id": 1, "name": "apple", "price": 0.5}
    assert read.json() == apple.json()
    assert listed.json() == [apple.json(), pear.json()]
    assert missing.status_code == 404
    assert missing.json()["detail"] == "no item 999"
    assert invalid.status_code == 400
    await database.stop()  # a Database given to a Service is the caller's to stop


async def test_rpcs_create_get_and_list(backend: Backend) -> None:
    database = backend.database()
    app, service = inventory(database, grpc=False)
    async with (
        serve(app) as address,
        httpx.AsyncClient(base_url=f"http://{address}", trust_env=False) as http,
    ):
        await service.wait_registered()
        created = await http.post("/items/create", json={"name": "fig", "price": 2.0})
        client = service.client
        again = await client.call("inventory", "Items.Create", {"name": "kiwi", "price": 1.5})
        got = await client.call("inventory", "Items.Get", {"id": created.json()["id"]})
        listed = await client.call("inventory", "Items.List", {}, response_model=None)
        try:
            await client.call("inventory", "Items.Get", {"id": 999})
        except errors.NotFound as exc:
            missing = exc
        await sessions_closed(database)
    await database.stop()  # a Database given to a Service is the caller's to stop
    assert created.json() == {"id": 1, "name": "fig", "price": 2.0}
    assert again == {"id": 2, "name": "kiwi", "price": 1.5}
    assert got == created.json()
    assert listed == {"items": [created.json(), again]}
    assert missing.detail == "no item 999"
    assert [Item.model_validate(row) for row in listed["items"]] == [
        Item(id=1, name="fig", price=2.0),
        Item(id=2, name="kiwi", price=1.5),
    ]
