from fastapi import FastAPI

from asgi_micro import MicroMiddleware, Service

app = FastAPI()  # an app written without asgi-micro in mind


@app.get("/items/{item_id}")
async def read_item(item_id: int) -> dict[str, int]:
    return {"id": item_id}


# The one line: start/stop with the app, register every route, serve /_micro/.
app.add_middleware(MicroMiddleware, service=Service("inventory"))
