"""A process without the deployment's key ring: ``IDENTITY_STRANGER`` names it (B's name, to
pose as B). It serves ``B.Whoami`` and counts the calls it gets (``GET /count``), publishes
on B's topic (``Stranger.Publish``) and says which of B's nodes it finds and trusts
(``Stranger.Sees``).
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from asgi_micro import MicroRouter, Service
from asgi_micro.broker.http import HTTPBroker
from asgi_micro.fastapi import Context
from tests.auth.apps.common import Ask, Note, Published, Seen, Sight, seen, sight

B = os.environ["IDENTITY_B"]
TOPIC = os.environ["IDENTITY_TOPIC"]

service = Service(os.environ["IDENTITY_STRANGER"])
posing = MicroRouter("B")
own = MicroRouter("Stranger")
calls = {"calls": 0, "with_token": 0}


@posing.rpc(idempotent=True)
async def whoami(req: Ask, ctx: Context) -> Seen:
    calls["calls"] += 1
    calls["with_token"] += ctx.authorization is not None
    return seen(service, ctx, req.note)


@own.rpc()
async def publish(req: Note) -> Published:
    event_id = await service.publish(TOPIC, req)
    broker = service.broker
    pending = await broker.pending() if isinstance(broker, HTTPBroker) else -1
    return Published(id=event_id, pending=pending)


@own.rpc(idempotent=True)
async def sees(req: Ask) -> Sight:
    return await sight(service, B)


app = FastAPI(lifespan=service.lifespan)
app.include_router(posing)
app.include_router(own)


@app.get("/count")
async def count() -> dict[str, int]:
    return calls
