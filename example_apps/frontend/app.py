"""The frontend: an existing FastAPI app that adopts asgi-micro with one line and calls the
greeter by name.

    asgi-micro run example_apps/frontend/app.py --port 8001
    curl -s 127.0.0.1:8001/welcome/Ada
"""

from __future__ import annotations

from fastapi import FastAPI

from asgi_micro import MicroMiddleware, Service
from example_apps.greeter.messages import HelloResponse

service = Service("frontend", version="1.0.0")

app = FastAPI(title="frontend")
app.add_middleware(MicroMiddleware, service=service)


@app.get("/welcome/{name}")
async def welcome(name: str) -> HelloResponse:
    # The greeter owns the rules for a name: a name it refuses comes back to our caller as
    # the greeter's 400, where building its request model here would fail as our own 500.
    return await service.client.call(
        "greeter", "Greeter.Hello", {"name": name}, response_model=HelloResponse
    )
