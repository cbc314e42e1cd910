"""Service A: calls B (``A.CallB`` over HTTP, ``A.CallBGrpc`` over gRPC), publishes on B's
topic (``A.Publish``) and says which of B's nodes it finds and trusts (``A.Sees``).

``IDENTITY_A`` names it, ``IDENTITY_B`` and ``IDENTITY_TOPIC`` are B's name and topic.
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from asgi_micro import MicroRouter, Service
from asgi_micro.client import Transport
from tests.auth.apps.common import Ask, Note, Published, Replies, Seen, Sight, Times, sight

B = os.environ["IDENTITY_B"]
TOPIC = os.environ["IDENTITY_TOPIC"]

service = Service(os.environ["IDENTITY_A"])
router = MicroRouter("A")


async def call_b(times: int, transport: Transport) -> Replies:
    return Replies(
        replies=[
            await service.client.call(
                B, "B.Whoami", Ask(note=str(n)), response_model=Seen, transport=transport
            )
            for n in range(times)
        ]
    )


@router.rpc()
async def call_b_http(req: Times) -> Replies:
    return await call_b(req.times, "http")


@router.rpc()
async def call_b_grpc(req: Times) -> Replies:
    return await call_b(req.times, "grpc")


@router.rpc()
async def publish(req: Note) -> Published:
    event_id = await service.publish(TOPIC, req)
    return Published(id=event_id)


@router.rpc(idempotent=True)
async def sees(req: Ask) -> Sight:
    return await sight(service, B)


app = FastAPI(lifespan=service.lifespan)
app.include_router(router)
