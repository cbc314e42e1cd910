"""The greeter: ``Greeter.Hello``, a stream of greetings, a chat, and a plain HTTP route.

Every RPC endpoint answers over HTTP and gRPC (``/greeter.Greeter/Hello``...):

asgi-micro run example_apps/greeter/app.py
curl -s -X POST 127.0.0.1:8000/greeter/hello -H 'content-type: application/json' -d '{"name":"Ada"}'
curl -sN 127.0.0.1:8000/greeter/greetings -H 'content-type: application/json' -d '{"name":"Ada"}'
asgi-micro call greeter Greeter.Hello '{"name": "Ada"}'
asgi-micro proto example_apps/greeter/app.py > greeter.proto
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

from fastapi import FastAPI
from pydantic import BaseModel, Field

from asgi_micro import MicroRouter, Service
from asgi_micro.fastapi import Context
from example_apps.greeter.messages import HelloRequest, HelloResponse


class GreetingsRequest(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    count: int = Field(default=3, ge=1, le=100)


service = Service("greeter", version="1.0.0")
greeter = MicroRouter("Greeter")


@greeter.rpc(idempotent=True)
async def hello(req: HelloRequest, ctx: Context) -> HelloResponse:
    """Greet one person."""
    greeting = ctx.metadata.get("greeting", "Hello")
    return HelloResponse(message=f"{greeting} {req.name}")


@greeter.rpc(idempotent=True)
async def greetings(req: GreetingsRequest, ctx: Context) -> AsyncIterator[HelloResponse]:
    """Greet one person ``count`` times: a stream of replies (gRPC server-streaming; NDJSON or
    Server-Sent Events over HTTP)."""
    greeting = ctx.metadata.get("greeting", "Hello")
    for number in range(1, req.count + 1):
        yield HelloResponse(message=f"{greeting} {req.name} ({number})")


@greeter.rpc()
async def chat(requests: AsyncIterator[HelloRequest]) -> AsyncIterator[HelloResponse]:
    """Greet everyone who comes by, as they come: a bidirectional stream (a WebSocket over
    HTTP)."""
    async for req in requests:
        yield HelloResponse(message=f"Hello {req.name}")


app = FastAPI(title="greeter", lifespan=service.lifespan)
app.include_router(greeter)


@app.get("/")
async def index() -> dict[str, str]:
    """A plain route: the node that answered, to see load balancing at work."""
    return {"service": service.name, "node": service.id, "pid": str(os.getpid())}
