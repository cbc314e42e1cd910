"""A service whose handlers keep typed rows in its database: plain routes and RPCs, one code
for SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI
from pydantic import BaseModel
from sqlmodel import Field, SQLModel, select

from asgi_micro import MicroRouter, Service, errors
from asgi_micro.data import Database, Session
from asgi_micro.registry.memory import MemoryRegistry


class ItemIn(SQLModel):
    name: str
    price: float = Field(ge=0)


class Item(ItemIn, table=True):
    id: int | None = Field(default=None, primary_key=True)


class ItemId(BaseModel):
    id: int


class ItemList(BaseModel):
    items: list[Item]


routes = APIRouter()
router = MicroRouter("Items")  # POST /items/create, /items/get, /items/list


@routes.post("/items", status_code=201)
async def create_item(item: ItemIn, session: Session) -> Item:
    row = Item.model_validate(item)
    session.add(row)
    await session.commit()
    return row


@routes.get("/items/{item_id}")
async def read_item(item_id: int, session: Session) -> Item:
    return await _get(session, item_id)


@routes.get("/items")
async def list_items(session: Session) -> list[Item]:
    return list(await session.exec(select(Item).order_by(Item.id)))


@router.rpc()
async def create(req: ItemIn, session: Session) -> Item:
    return await create_item(req, session)


@router.rpc()
async def get(req: ItemId, session: Session) -> Item:
    return await _get(session, req.id)


@router.rpc(name="List")
async def list_all(session: Session) -> ItemList:
    return ItemList(items=await list_items(session))


async def _get(session: Any, item_id: int) -> Item:
    item: Item | None = await session.get(Item, item_id)
    if item is None:
        raise errors.NotFound(f"no item {item_id}")
    return item


def inventory(database: Database, **options: Any) -> tuple[FastAPI, Service]:
    service = Service(
        "inventory", registry=MemoryRegistry(), database=database, drain_grace=0.0, **options
    )
    app = FastAPI(lifespan=service.lifespan)
    app.include_router(routes)
    app.include_router(router)
    return app, service
