from fastapi import FastAPI
from pydantic import BaseModel

from asgi_micro import MicroRouter, Service

service = Service("greeter", version="1.0.0")
greeter = MicroRouter("Greeter")  # an APIRouter: endpoints are "Greeter.<Method>"


class HelloRequest(BaseModel):
    name: str


class HelloResponse(BaseModel):
    message: str


@greeter.rpc()  # POST /greeter/hello
async def hello(req: HelloRequest) -> HelloResponse:
    return HelloResponse(message=f"Hello {req.name}")


app = FastAPI(lifespan=service.lifespan)
app.include_router(greeter)
