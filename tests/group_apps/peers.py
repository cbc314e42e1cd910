"""A service that answers ``<Name>.Echo`` and, for ``<Name>.Ask``, asks its peer's ``Echo``.

The same code serves whether the peer runs in this process or another: it calls the peer by
name through ``service.client``, as any service calls another.
"""

from __future__ import annotations

import os
from typing import Literal

from fastapi import FastAPI
from pydantic import BaseModel

from asgi_micro import MicroRouter, Service


class Text(BaseModel):
    text: str


class Question(BaseModel):
    text: str
    transport: Literal["http", "grpc"]


class Echo(BaseModel):
    text: str
    by: str
    pid: int


class Answer(BaseModel):
    asked: str
    answer: Echo


def peer(name: str, other: str) -> FastAPI:
    """An app whose service ``name`` calls the service ``other``."""
    service = Service(name)
    router = MicroRouter(name.capitalize())

    @router.rpc()
    async def echo(req: Text) -> Echo:
        return Echo(text=req.text, by=name, pid=os.getpid())

    @router.rpc()
    async def ask(req: Question) -> Answer:
        answer = await service.client.call(
            other,
            f"{other.capitalize()}.Echo",
            {"text": req.text},
            response_model=Echo,
            transport=req.transport,
        )
        return Answer(asked=name, answer=answer)

    app = FastAPI(title=name, lifespan=service.lifespan)
    app.include_router(router)
    return app
