"""Auth on a service: an account, a rule, and handlers that know who calls."""

from typing import Annotated

from fastapi import FastAPI
from pydantic import BaseModel

from asgi_micro import MicroRouter, Service, auth
from asgi_micro.auth import Resource, Rule
from asgi_micro.fastapi import Account, require_scopes

service = Service("greeter", auth="jwt://")  # auth on; or MICRO_AUTH=jwt://
greeter = MicroRouter("Greeter")


class HelloRequest(BaseModel):
    name: str


class HelloResponse(BaseModel):
    message: str


@greeter.rpc()
async def hello(req: HelloRequest, account: Account) -> HelloResponse:
    return HelloResponse(message=f"Hello {req.name}, from {account.id}")


@greeter.rpc()
async def reset(
    req: HelloRequest, admin: Annotated[auth.Account, require_scopes("admin")]
) -> HelloResponse:
    return HelloResponse(message=f"{admin.id} reset {req.name}")


app = FastAPI(lifespan=service.lifespan)
app.include_router(greeter)


async def set_up() -> str:
    """An account, the rules, and a token for the account: what ``asgi-micro auth`` does."""
    ada = await service.auth.generate("ada", scopes=["user"])
    await service.auth.grant(Rule("users", "user", Resource("service", "greeter", "Greeter.*")))
    tokens = await service.auth.token(id="ada", secret=ada.secret)
    return tokens.access_token
