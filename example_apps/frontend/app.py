"""The frontend: an existing FastAPI app that adopts asgi-micro with one line and calls the
greeter by name.

    asgi-micro run example_apps/frontend/app.py --port 8001
    curl -s 127.0.0.1:8001/welcome/Ada
"""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, Path

from asgi_micro import MicroMiddleware, Service
from example_apps.greeter.messages import HelloRequest, HelloResponse

# It faces browsers: their Micro-* headers are not ours to believe or pass on.
service = Service("frontend", version="1.0.0", trust_callers=False)

app = FastAPI(title="frontend")
app.add_middleware(MicroMiddleware, service=service)

# The greeter owns the rules for a name: a name it refuses comes back to our caller as the
# greeter's 400, where building its request model here would fail as our own 500. The
# document states the rules (from the greeter's message); the greeter enforces them.
_NAME = HelloRequest.model_json_schema()["properties"]["name"]
Name = Annotated[
    str, Path(json_schema_extra={key: _NAME[key] for key in ("minLength", "maxLength")})
]


@app.get(
    "/welcome/{name}",
    responses={
        502: {"description": "Bad Gateway: the connection to the greeter broke"},
        503: {"description": "Service Unavailable: no greeter could be reached"},
    },
)
async def welcome(name: Name) -> HelloResponse:
    return await service.client.call(
        "greeter", "Greeter.Hello", {"name": name}, response_model=HelloResponse
    )
