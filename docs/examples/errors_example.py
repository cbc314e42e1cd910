from pydantic import BaseModel

from asgi_micro import MicroRouter, errors

inventory = MicroRouter("Inventory")


class Lookup(BaseModel):
    sku: str


class Item(BaseModel):
    sku: str
    stock: int


STOCK = {"apple": 3}


@inventory.rpc(idempotent=True)
async def get(req: Lookup) -> Item:
    if req.sku not in STOCK:
        raise errors.NotFound(f"no item {req.sku!r}")  # 404 over HTTP, NotFound in the caller
    return Item(sku=req.sku, stock=STOCK[req.sku])
