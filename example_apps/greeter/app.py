"""The greeter: one RPC endpoint, ``Greeter.Hello``, and a plain HTTP route.

asgi-micro run example_apps/greeter/app.py
curl -s -X POST 127.0.0.1:8000/greeter/hello -H 'content-type: application/json' -d '{"name":"Ada"}'
asgi-micro call greeter Greeter.Hello '{"name": "Ada"}'
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from asgi_micro import MicroRouter, Service
from asgi_micro.fastapi import Context
from example_apps.greeter.messages import HelloRequest, HelloResponse

service = Service("greeter", version="1.0.0")
greeter = MicroRouter("Greeter")


@greeter.rpc(idempotent=True)
async def hello(req: HelloRequest, ctx: Context) -> HelloResponse:
    greeting = ctx.metadata.get("greeting", "Hello")
    return HelloResponse(message=f"{greeting} {req.name}")


app = FastAPI(title="greeter", lifespan=service.lifespan)
app.include_router(greeter)


@app.get("/")
async def index() -> dict[str, str]:
    """A plain route: the node that answered, to see load balancing at work."""
    return {"service": service.name, "node": service.id, "pid": str(os.getpid())}
