"""The service ``tests/test_limits.py`` floods: an RPC on the fast path, one FastAPI serves (it
takes the ``Request``), a plain route that reads its whole body, and a WebSocket echo."""

from __future__ import annotations

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from pydantic import BaseModel

from asgi_micro import MicroRouter, Service


class Text(BaseModel):
    text: str


service = Service("limits")
router = MicroRouter("Limits")


@router.rpc()
async def echo(req: Text) -> Text:
    return req


@router.rpc()
async def peer(req: Text, request: Request) -> Text:
    """Served by FastAPI, which resolves the ``Request``."""
    return Text(text=f"{req.text} from {request.client.host if request.client else '?'}")


app = FastAPI(lifespan=service.lifespan)
app.include_router(router)


@app.post("/upload")
async def upload(request: Request) -> dict[str, int]:
    return {"size": len(await request.body())}


@app.get("/hello")
async def hello() -> dict[str, str]:
    return {"hello": "world"}


@app.websocket("/echo")
async def echo_socket(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            await websocket.send_bytes(await websocket.receive_bytes())
    except WebSocketDisconnect:
        pass
