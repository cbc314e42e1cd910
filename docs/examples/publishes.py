"""A service that declares what it publishes: the AsyncAPI document lists it, and ``publish``
checks each message against it."""

from fastapi import FastAPI
from pydantic import BaseModel

from asgi_micro import Service


class User(BaseModel):
    name: str
    email: str


service = Service("users")
service.publishes("user.created", User, description="When someone signs up.")
welcomed: list[str] = []


@service.subscribe("user.created", queue="mailer")
async def welcome(user: User) -> None:
    """Send a welcome mail."""
    welcomed.append(user.email)


async def sign_up(name: str, email: str) -> str:
    # A dict is validated into a User and sent as one; {"name": name} alone is a ValueError.
    return await service.publish("user.created", {"name": name, "email": email})


app = FastAPI(lifespan=service.lifespan)  # GET /_micro/asyncapi.json describes both topics
