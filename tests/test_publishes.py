"""``service.publishes(topic, Model)``: a declared topic is a contract. ``publish`` on it takes
the model or what validates into it, encodes it as the model (in any codec), and refuses the
rest with a ``ValueError`` before anything reaches the broker."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from asgi_micro import MicroRouter, Service
from asgi_micro.asyncapi import asyncapi
from asgi_micro.broker import Event
from asgi_micro.broker.memory import MemoryBroker
from asgi_micro.fastapi import Broker
from asgi_micro.registry.memory import MemoryRegistry
from tests.helpers import serve


class User(BaseModel):
    name: str
    age: int = 0


class Admin(BaseModel):
    name: str
    level: int


def make_service(url: str) -> Service:
    return Service("users", registry=MemoryRegistry(), store="memory://", broker=url)


@pytest.fixture
def url() -> str:
    return f"memory://{uuid.uuid4().hex}"


class Listener:
    """A raw subscriber on a memory hub: what was really published, bytes and all."""

    def __init__(self, url: str, topic: str) -> None:
        self.broker = MemoryBroker(url)
        self.topic = topic
        self.events: asyncio.Queue[Event] = asyncio.Queue()

    async def __aenter__(self) -> Listener:
        await self.broker.start()

        async def handle(event: Event) -> None:
            self.events.put_nowait(event)

        await self.broker.subscribe(self.topic, handle)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.broker.stop()

    async def next(self) -> Event:
        return await asyncio.wait_for(self.events.get(), 5)


async def test_a_dict_is_validated_into_the_declared_model_and_sent_as_it(url: str) -> None:
    service = make_service(url)
    service.publishes("user.created", User)
    async with service, Listener(url, "user.created") as listener:
        await service.publish("user.created", {"name": "Ada"})
        event = await listener.next()
    assert orjson.loads(event.body) == {"name": "Ada", "age": 0}  # the model's default, sent


async def test_an_instance_goes_as_it_is(url: str) -> None:
    service = make_service(url)
    service.publishes("user.created", User)
    async with service, Listener(url, "user.created") as listener:
        await service.publish("user.created", User(name="Ada", age=36))
        assert orjson.loads((await listener.next()).body) == {"name": "Ada", "age": 36}


@pytest.mark.parametrize(
    ("message", "why"),
    [
        ({"age": 3}, "name"),  # a required field missing
        ({"name": "Ada", "age": "old"}, "age"),
        (Admin(name="Ada", level=1), "User"),  # another model
        ("Ada", "User"),
    ],
)
async def test_what_does_not_fit_is_refused_before_the_broker(
    url: str, message: Any, why: str
) -> None:
    service = make_service(url)
    service.publishes("user.created", User)
    async with service, Listener(url, "user.created") as listener:
        with pytest.raises(ValueError, match=r"user\.created: the message is not") as refused:
            await service.publish("user.created", message)
        assert why in str(refused.value)
        await service.publish("user.created", {"name": "Bob"})
        # Nothing went before the valid one.
        assert orjson.loads((await listener.next()).body)["name"] == "Bob"


async def test_undeclared_topics_take_anything(url: str) -> None:
    service = make_service(url)
    service.publishes("user.created", User)
    async with service, Listener(url, "other") as listener:
        await service.publish("other", {"anything": [1, 2]})
        assert orjson.loads((await listener.next()).body) == {"anything": [1, 2]}


async def test_a_declared_model_travels_in_every_codec(url: str) -> None:
    """A dict has no protobuf encoding of its own; declared, it is encoded as the model, and a
    subscriber typed by the model reads it."""
    publisher = make_service(url)
    publisher.publishes("user.created", User)
    subscriber = Service("greeter", registry=MemoryRegistry(), store="memory://", broker=url)
    seen: asyncio.Queue[User] = asyncio.Queue()

    @subscriber.subscribe("user.created")
    async def on_user(user: User) -> None:
        seen.put_nowait(user)

    async with subscriber, publisher:
        for content_type in ("application/protobuf", "application/msgpack"):
            await publisher.publish(
                "user.created", {"name": "Ada", "age": 3}, content_type=content_type
            )
            assert await asyncio.wait_for(seen.get(), 5) == User(name="Ada", age=3)


async def test_a_handler_publishing_what_does_not_fit_is_a_server_error(url: str) -> None:
    """The publisher's bug, not its caller's: a 500, not a 400."""
    service = make_service(url)
    service.publishes("user.created", User)
    users = MicroRouter("Users")

    @users.rpc()
    async def create(user: User, broker: Broker) -> User:
        await broker.publish("user.created", {"nickname": user.name})
        return user

    app = FastAPI(lifespan=service.lifespan)
    app.include_router(users)
    async with serve(app) as address, httpx.AsyncClient(base_url=f"http://{address}") as http:
        response = await http.post("/users/create", json={"name": "Ada"})
    assert response.status_code == 500


def test_declarations(url: str) -> None:
    service = make_service(url)
    service.publishes("user.created", User, description="When someone signs up.")
    service.publishes("user.created", User)  # again, the same: fine
    with pytest.raises(ValueError, match="declared already"):
        service.publishes("user.created", Admin)
    with pytest.raises(ValueError, match="a topic is dot-separated words"):
        service.publishes("user created", User)
    [publication] = service.events.published.values()
    assert (publication.topic, publication.message.type) == ("user.created", User)


async def test_the_docs_example(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("MICRO_BROKER", url)
    monkeypatch.setenv("MICRO_REGISTRY", "memory://")
    path = Path(__file__).parents[1] / "docs" / "examples" / "publishes.py"
    spec = importlib.util.spec_from_file_location(f"docs_example_{uuid.uuid4().hex}", path)
    assert spec is not None
    assert spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example  # the handler's annotations resolve in its module
    try:
        spec.loader.exec_module(example)
        operations = asyncapi(example.service)["operations"]
        assert {"send.user.created", "receive.user.created.mailer"} <= set(operations)
        async with example.service:
            await example.sign_up("Ada", "ada@example.com")
            for _ in range(500):
                if example.welcomed:
                    break
                await asyncio.sleep(0.01)
            assert example.welcomed == ["ada@example.com"]
            with pytest.raises(ValueError, match="email"):
                await example.service.publish("user.created", {"name": "Bob"})
    finally:
        sys.modules.pop(spec.name, None)
