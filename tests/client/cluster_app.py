"""A node of the test cluster: ``Echo.Safe`` (idempotent) and ``Echo.Unsafe`` answer with the
node's id. The service name comes from ``CLUSTER_SERVICE`` so concurrent runs stay apart."""

from __future__ import annotations

import asyncio
import os

from fastapi import FastAPI
from pydantic import BaseModel

from asgi_micro import MicroRouter, Service

service = Service(os.environ["CLUSTER_SERVICE"], version="1.0.0")
echo = MicroRouter("Echo")


class Ping(BaseModel):
    delay: float = 0.0


class Pong(BaseModel):
    node: str


@echo.rpc(idempotent=True)
async def safe(req: Ping) -> Pong:
    await asyncio.sleep(req.delay)
    return Pong(node=service.id)


@echo.rpc()
async def unsafe(req: Ping) -> Pong:
    await asyncio.sleep(req.delay)
    return Pong(node=service.id)


app = FastAPI(lifespan=service.lifespan)
app.include_router(echo)
