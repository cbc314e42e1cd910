import logging
import time
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from asgi_micro import Call, ClientCall, ClientNext, MicroRouter, Next, Service, errors

logger = logging.getLogger("example.wrappers")
service = Service("greeter")
greeter = MicroRouter("Greeter")


class HelloRequest(BaseModel):
    name: str


class HelloResponse(BaseModel):
    message: str


@greeter.rpc()
async def hello(req: HelloRequest) -> HelloResponse:
    return HelloResponse(message=f"Hello {req.name}")


@service.wrap
async def timed(call: Call, next: Next) -> Any:
    """Every call, on every protocol: its endpoint, how it came, how long it took."""
    started = time.perf_counter()
    try:
        return await next(call)
    finally:
        took = time.perf_counter() - started
        logger.info("%s over %s took %.1f ms", call.endpoint, call.protocol, took * 1000)


@service.wrap
async def members_only(call: Call, next: Next) -> Any:
    """A refusal reads the same on HTTP, gRPC and WebSocket: 403 in Go Micro's shape."""
    if call.metadata.get("member") != "yes":
        raise errors.Forbidden(f"{call.endpoint} is for members")
    return await next(call)


@service.client.wrap
async def as_member(call: ClientCall, next: ClientNext) -> Any:
    """Every outgoing call of this service's client carries the membership."""
    call.context.metadata["member"] = "yes"
    return await next(call)


app = FastAPI(lifespan=service.lifespan)
app.include_router(greeter)
