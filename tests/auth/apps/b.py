"""Service B: tells who called it (``B.Whoami``, and ``B.OpenWhoami``, which the rules leave
public) and keeps the events that reached its subscriber, and the dead letters of its topic.

``IDENTITY_B`` names it, ``IDENTITY_TOPIC`` is the topic it subscribes to.
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from asgi_micro import MicroRouter, Service
from asgi_micro.fastapi import Context
from tests.auth.apps.common import Ask, Note, Seen, seen

TOPIC = os.environ["IDENTITY_TOPIC"]

service = Service(os.environ["IDENTITY_B"])
router = MicroRouter("B")
received: list[Seen] = []
dead: list[Seen] = []


@router.rpc(idempotent=True)
async def whoami(req: Ask, ctx: Context) -> Seen:
    return seen(service, ctx, req.note)


@router.rpc(idempotent=True)
async def open_whoami(req: Ask, ctx: Context) -> Seen:
    return seen(service, ctx, req.note)


@service.subscribe(TOPIC)
async def on_note(note: Note, ctx: Context) -> None:
    received.append(seen(service, ctx, note.note))


@service.subscribe(f"{TOPIC}.dead")
async def on_dead_note(note: Note, ctx: Context) -> None:
    found = seen(service, ctx, note.note)
    found.error = ctx.metadata.get("error")
    found.deliveries = ctx.metadata.get("deliveries")
    dead.append(found)


app = FastAPI(lifespan=service.lifespan)
app.include_router(router)


@app.get("/received")
async def events() -> dict[str, list[Seen]]:
    """What reached the subscriber, and what was dead-lettered instead."""
    return {"received": received, "dead": dead}
