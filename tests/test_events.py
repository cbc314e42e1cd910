"""Events as a service sees them: ``@service.subscribe`` handlers typed by a model, with
dependencies; ``service.publish`` and the ``Broker`` dependency; one wrapper for RPCs and
events; what travels with an event; drains that wait for an event being handled."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from asgi_micro import MicroRouter, Service, errors
from asgi_micro.broker import DEAD_SUFFIX, ERROR_HEADER, Event
from asgi_micro.broker.memory import MemoryBroker
from asgi_micro.fastapi import Broker, Context, Store
from asgi_micro.pipeline import Call, Next
from asgi_micro.registry.memory import MemoryRegistry
from tests.helpers import serve, until


class User(BaseModel):
    name: str
    age: int = 0


@pytest.fixture
def broker_url() -> str:
    return f"memory://{uuid.uuid4().hex}"


def service(name: str, broker_url: str, **options: Any) -> Service:
    return Service(name, registry=MemoryRegistry(), store="memory://", broker=broker_url, **options)


async def test_a_subscriber_gets_its_model_and_dependencies(broker_url: str) -> None:
    users = service("users", broker_url)
    greeter = service("greeter", broker_url)
    seen: list[tuple[User, dict[str, str], bool]] = []

    @greeter.subscribe("user.created", queue="greeter")
    async def on_user_created(user: User, ctx: Context, store: Store) -> None:
        await store.write(user.name, b"welcomed")
        seen.append((user, ctx.metadata, ctx.deadline is not None))

    async with users, greeter:
        event_id = await users.publish(
            "user.created", User(name="Ada", age=36), metadata={"tenant": "acme"}
        )
        await until(lambda: seen, "the event")
        [record] = await greeter.store.read("Ada")
        assert record.value == b"welcomed"
    assert len(event_id) == 32
    assert seen == [(User(name="Ada", age=36), {"tenant": "acme", "from-service": "users"}, False)]


async def test_one_wrapper_sees_rpcs_and_events(broker_url: str) -> None:
    greeter = service("greeter", broker_url)
    router = MicroRouter("Greeter")
    calls: list[tuple[str, str, Any]] = []

    @greeter.wrap
    async def record(call: Call, next: Next) -> Any:
        calls.append((call.protocol, call.endpoint, call.request))
        return await next(call)

    @router.rpc()
    async def hello(user: User, broker: Broker) -> User:
        await broker.publish("user.greeted", user)
        return user

    handled: list[User] = []

    @greeter.subscribe("user.greeted")
    async def on_greeted(user: User) -> None:
        handled.append(user)

    app = FastAPI(lifespan=greeter.lifespan)
    app.include_router(router)
    async with serve(app) as address, httpx.AsyncClient() as http:
        response = await http.post(f"http://{address}/greeter/hello", json={"name": "Ada"})
        assert response.status_code == 200
        await until(lambda: handled, "the event")
    assert calls == [
        ("http", "Greeter.Hello", User(name="Ada")),
        ("event", "user.greeted", User(name="Ada")),
    ]


async def test_a_plain_route_publishes_through_the_dependency(broker_url: str) -> None:
    shop = service("shop", broker_url, grpc=False)
    handled: list[User] = []

    @shop.subscribe("order.placed")
    async def on_order(user: User) -> None:
        handled.append(user)

    app = FastAPI(lifespan=shop.lifespan)

    @app.post("/orders")
    async def place(user: User, broker: Broker) -> dict[str, str]:
        return {"event": await broker.publish("order.placed", user)}

    async with serve(app) as address, httpx.AsyncClient() as http:
        response = await http.post(f"http://{address}/orders", json={"name": "Bo"})
        await until(lambda: handled, "the event")
    assert response.status_code == 200
    assert handled == [User(name="Bo")]


async def test_an_event_that_does_not_fit_the_model_is_dead_at_once(broker_url: str) -> None:
    greeter = service("greeter", broker_url)
    raw = MemoryBroker(broker_url, source="someone")
    attempts: list[User] = []

    @greeter.subscribe("user.created", queue="greeter")
    async def on_user_created(user: User) -> None:
        attempts.append(user)

    dead: list[Event] = []

    async def record(event: Event) -> None:
        dead.append(event)

    async with greeter, raw:
        await raw.subscribe("user.created" + DEAD_SUFFIX, record)
        await raw.publish("user.created", b'{"age": "old"}')
        await until(lambda: dead, "the dead letter")
    assert attempts == []
    error = orjson.loads(dead[0].headers[ERROR_HEADER])
    assert error["code"] == 400
    assert "name" in error["detail"]
    assert greeter.stats.errors == 0  # the event's fault, not the service's


async def test_a_raising_handler_is_redelivered_and_counted(broker_url: str) -> None:
    greeter = service("greeter", broker_url)
    deliveries: list[int] = []

    @greeter.wrap
    async def count(call: Call, next: Next) -> Any:
        deliveries.append(call.state["event"].deliveries)
        return await next(call)

    @greeter.subscribe("user.created", queue="greeter", max_deliveries=2)
    async def on_user_created(user: User) -> None:
        if len(deliveries) < 2:
            raise errors.ServiceUnavailable("not yet")

    async with greeter, service("users", broker_url) as users:
        await users.publish("user.created", User(name="Ada"))
        await until(lambda: len(deliveries) >= 2, "the second delivery", timeout=10)
        await asyncio.sleep(0.1)
    assert deliveries == [1, 2]
    assert greeter.stats.errors == 1  # the first delivery failed


async def test_the_deadline_travels_only_when_the_publisher_gives_one(broker_url: str) -> None:
    greeter = service("greeter", broker_url)
    remaining: list[float | None] = []

    @greeter.subscribe("ping")
    async def on_ping(user: User, ctx: Context) -> None:
        remaining.append(ctx.remaining())

    async with greeter, service("users", broker_url) as users:
        await users.publish("ping", User(name="a"))
        await users.publish("ping", User(name="b"), timeout=30)
        await until(lambda: len(remaining) == 2, "both events")
    first, second = remaining
    assert first is None
    assert second is not None
    assert 25 < second <= 30


async def test_an_event_past_its_deadline_is_dead_lettered(broker_url: str) -> None:
    greeter = service("greeter", broker_url)
    handled: list[User] = []

    @greeter.subscribe("ping", queue="greeter")
    async def on_ping(user: User) -> None:
        handled.append(user)

    dead: list[Event] = []

    async def record(event: Event) -> None:
        dead.append(event)

    async with service("users", broker_url) as users:
        await users.broker.subscribe("ping" + DEAD_SUFFIX, record)
        async with greeter:
            pass  # the queue group exists from now on
        await users.publish("ping", User(name="late"), timeout=0.05)
        await asyncio.sleep(0.1)
        async with greeter:
            await until(lambda: dead, "the dead letter")
    assert handled == []
    assert orjson.loads(dead[0].headers[ERROR_HEADER])["code"] == 408


async def test_a_drain_waits_for_the_event_being_handled(broker_url: str) -> None:
    greeter = service("greeter", broker_url)
    started, finished = asyncio.Event(), asyncio.Event()

    @greeter.subscribe("slow")
    async def on_slow(user: User) -> None:
        started.set()
        await asyncio.sleep(0.3)
        finished.set()

    async with service("users", broker_url) as users:
        await greeter.start()
        await users.publish("slow", User(name="a"))
        await asyncio.wait_for(started.wait(), 5)
        assert greeter.stats.in_flight == 1
        await greeter.stop()
        assert finished.is_set()
        assert greeter.stats.in_flight == 0


async def test_an_untrusting_service_reads_no_metadata_from_events(broker_url: str) -> None:
    edge = service("edge", broker_url, trust_callers=False)
    seen: list[dict[str, str]] = []

    @edge.subscribe("ping")
    async def on_ping(user: User, ctx: Context) -> None:
        seen.append(ctx.metadata)

    async with edge, service("users", broker_url) as users:
        await users.publish("ping", User(name="a"), metadata={"role": "admin"})
        await until(lambda: seen, "the event")
    assert seen == [{}]


def test_subscribers_are_checked() -> None:
    greeter = service("greeter", "memory://")

    def blocking(user: User) -> None: ...

    with pytest.raises(TypeError, match="must be async"):
        greeter.subscribe("a")(blocking)

    async def streams(user: User) -> AsyncIterator[User]:
        yield user

    with pytest.raises(TypeError, match="returns nothing"):
        greeter.subscribe("a")(streams)
    with pytest.raises(ValueError, match="concurrency"):

        @greeter.subscribe("a", concurrency=0)
        async def none(user: User) -> None: ...
