"""Events published and handled, per broker, against the raw clients and FastStream.

Each scenario publishes ``--events`` events (a small pydantic model carrying its send time) with
at most ``--window`` publishes waiting for the server's acknowledgement, to one subscriber in a
queue group in the same process, which decodes each and acks it. Reported per scenario: the
median over rounds of events/s (first publish to last handled) and of the p50 and p99 latency
(publish to handled) and of this process's CPU time per event (publisher and subscriber
together; the server's own is not in it), and the ratios of asgi-micro to the raw client and to
FastStream on the same server. Rounds alternate the scenarios in shuffled order so drift hits all alike.

The process runs as ``asgi-micro run`` runs a service: ``MICRO_GC_FREEZE=true``, so each service
freezes the heap once started (``asgi_micro/heap.py``), and the heap is frozen once for all
scenarios after the warm-up. ``--no-gc-freeze`` leaves the garbage collector as it is.

    uv run python benchmarks/broker.py [--rounds 5] [--events 5000] [--window 32]
                                       [--only memory,nats,...] [--no-gc-freeze]

Scenarios (each needs its server on 127.0.0.1; one that cannot connect is left out):

    memory           asgi-micro, service.publish -> @service.subscribe, memory://
    memory-broker    asgi-micro's MemoryBroker alone: bytes in, bytes out
    http             asgi-micro, the embedded HTTP broker (two services on loopback)
    nats             asgi-micro on NATS JetStream
    nats-py-js       raw nats-py JetStream: publish, a durable pull consumer, ack
    nats-py-core     raw nats-py core NATS: a queue subscription (no persistence, no acks)
    faststream       FastStream's NatsBroker on the same JetStream, same pydantic model
    redis            asgi-micro on Redis Streams
    redis-py         raw redis-py Streams: XADD, XREADGROUP, XACK
    amqp             asgi-micro on RabbitMQ
    aio-pika         raw aio-pika: confirmed publish, a durable queue, prefetch, ack

Everything stays on 127.0.0.1, every scenario deletes what it created, and every round is
bounded by ``--timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NATS = "nats://127.0.0.1:4222"
REDIS = "redis://127.0.0.1:6379/0"
AMQP = "amqp://guest:guest@127.0.0.1:5672/"


class Person(BaseModel):
    name: str
    age: int
    sent_at: float


Handled = Callable[[float], None]
"""Called by a scenario's subscriber with the handled event's send time."""
Publish = Callable[[float], Awaitable[None]]


@dataclass
class Result:
    rate: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


# -- asgi-micro -----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def micro(url: str, handled: Handled) -> AsyncIterator[Publish]:
    from asgi_micro import Service
    from asgi_micro.registry.memory import MemoryRegistry

    registry = MemoryRegistry()
    topic = f"bench.{uuid.uuid4().hex[:8]}"
    subscriber = Service("bench-sub", registry=registry, store="memory://", broker=url)
    publisher = Service("bench-pub", registry=registry, store="memory://", broker=url)

    @subscriber.subscribe(topic, queue="bench")
    async def on_person(person: Person) -> None:
        handled(person.sent_at)

    async with subscriber, publisher:

        async def publish(sent_at: float) -> None:
            await publisher.publish(topic, Person(name="Ada", age=36, sent_at=sent_at))

        yield publish


@contextlib.asynccontextmanager
async def micro_http(handled: Handled) -> AsyncIterator[Publish]:
    """The embedded broker: the subscriber serves its app on loopback (uvicorn, in this
    process), the publisher finds it through a shared in-memory registry."""
    import tempfile

    import uvicorn
    from fastapi import FastAPI

    from asgi_micro import Service
    from asgi_micro.registry.memory import MemoryRegistry
    from benchmarks.harness import free_port

    registry = MemoryRegistry()
    topic = f"bench.{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as outbox:
        port = free_port()
        subscriber = Service(
            "bench-sub",
            registry=registry,
            store="memory://",
            broker="http://",
            address=f"127.0.0.1:{port}",
            grpc=False,
        )
        publisher = Service(
            "bench-pub",
            registry=registry,
            store="memory://",
            broker=f"http://?outbox={outbox}/outbox.db",
            grpc=False,
        )

        @subscriber.subscribe(topic, queue="bench")
        async def on_person(person: Person) -> None:
            handled(person.sent_at)

        app = FastAPI(lifespan=subscriber.lifespan)
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        )
        serving = asyncio.create_task(server.serve())
        try:
            await subscriber.wait_registered()
            async with publisher:

                async def publish(sent_at: float) -> None:
                    await publisher.publish(topic, Person(name="Ada", age=36, sent_at=sent_at))

                yield publish
        finally:
            server.should_exit = True
            await serving


@contextlib.asynccontextmanager
async def memory_broker(handled: Handled) -> AsyncIterator[Publish]:
    from asgi_micro.broker import Event
    from asgi_micro.broker.memory import MemoryBroker

    broker = MemoryBroker(f"memory://{uuid.uuid4().hex}", source="bench")

    async def on_event(event: Event) -> None:
        handled(orjson.loads(event.body)["sent_at"])

    async with broker:
        await broker.subscribe("bench.raw", on_event, queue="bench")

        async def publish(sent_at: float) -> None:
            body = orjson.dumps({"name": "Ada", "age": 36, "sent_at": sent_at})
            await broker.publish("bench.raw", body)

        yield publish


# -- raw clients and FastStream -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def nats_py_js(handled: Handled) -> AsyncIterator[Publish]:
    import nats

    name = f"bench_{uuid.uuid4().hex[:8]}"
    nc = await nats.connect(NATS)
    js = nc.jetstream()
    await js.add_stream(name=name, subjects=[f"{name}.>"])
    subscription = await js.pull_subscribe(f"{name}.t", durable="bench", stream=name)

    async def consume() -> None:
        while True:
            with contextlib.suppress(nats.errors.TimeoutError):
                for msg in await subscription.fetch(16, timeout=1):
                    handled(Person.model_validate_json(msg.data).sent_at)
                    await msg.ack()

    consumer = asyncio.create_task(consume())
    try:

        async def publish(sent_at: float) -> None:
            body = Person(name="Ada", age=36, sent_at=sent_at).model_dump_json().encode()
            await js.publish(f"{name}.t", body)

        yield publish
    finally:
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
        await js.delete_stream(name)
        await nc.close()


@contextlib.asynccontextmanager
async def nats_py_core(handled: Handled) -> AsyncIterator[Publish]:
    import nats

    subject = f"bench_{uuid.uuid4().hex[:8]}.t"
    nc = await nats.connect(NATS)

    async def on_msg(msg: Any) -> None:
        handled(Person.model_validate_json(msg.data).sent_at)

    await nc.subscribe(subject, queue="bench", cb=on_msg)
    try:
        sent = 0

        async def publish(sent_at: float) -> None:
            nonlocal sent
            body = Person(name="Ada", age=36, sent_at=sent_at).model_dump_json().encode()
            await nc.publish(subject, body)
            sent += 1
            if sent % 32 == 0:
                await nc.flush()

        yield publish
        await nc.flush()
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def faststream_js(handled: Handled) -> AsyncIterator[Publish]:
    from faststream.nats import JStream, NatsBroker, PullSub

    name = f"bench_fs_{uuid.uuid4().hex[:8]}"
    broker = NatsBroker(NATS, logger=None)
    stream = JStream(name=name, subjects=[f"{name}.>"])

    @broker.subscriber(f"{name}.t", stream=stream, durable="bench", pull_sub=PullSub(16))
    async def on_person(person: Person) -> None:
        handled(person.sent_at)

    await broker.start()
    try:

        async def publish(sent_at: float) -> None:
            await broker.publish(
                Person(name="Ada", age=36, sent_at=sent_at), f"{name}.t", stream=name
            )

        yield publish
    finally:
        await broker.stop()
        import nats

        nc = await nats.connect(NATS)
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_stream(name)
        await nc.close()


@contextlib.asynccontextmanager
async def redis_py(handled: Handled) -> AsyncIterator[Publish]:
    import redis.asyncio as redis

    key = f"bench:{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(REDIS)
    await client.xgroup_create(key, "bench", id="$", mkstream=True)

    stop = asyncio.Event()

    async def consume() -> None:
        # Ends by itself rather than cancelled: redis-py leaves a connection whose blocking
        # read was cancelled unusable for a while.
        while not stop.is_set():
            replies = await client.xreadgroup("bench", "c1", {key: ">"}, count=16, block=100)
            for _, entries in replies or ():
                for entry_id, fields in entries:
                    handled(Person.model_validate_json(fields[b"body"]).sent_at)
                    await client.xack(key, "bench", entry_id)

    consumer = asyncio.create_task(consume())
    try:

        async def publish(sent_at: float) -> None:
            body = Person(name="Ada", age=36, sent_at=sent_at).model_dump_json()
            await client.xadd(key, {"body": body})

        yield publish
    finally:
        stop.set()
        await consumer
        await client.delete(key)
        await client.aclose()


@contextlib.asynccontextmanager
async def aio_pika_raw(handled: Handled) -> AsyncIterator[Publish]:
    import aio_pika

    name = f"bench.{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect_robust(AMQP)
    channel = await connection.channel(publisher_confirms=True)
    await channel.set_qos(prefetch_count=16)
    exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(f"{name}.bench", durable=True)
    await queue.bind(exchange, routing_key="t")

    async def on_message(message: Any) -> None:
        handled(Person.model_validate_json(message.body).sent_at)
        await message.ack()

    tag = await queue.consume(on_message)
    try:

        async def publish(sent_at: float) -> None:
            body = Person(name="Ada", age=36, sent_at=sent_at).model_dump_json().encode()
            await exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key="t",
            )

        yield publish
    finally:
        await queue.cancel(tag)
        await queue.delete(if_unused=False, if_empty=False)
        await exchange.delete()
        await connection.close()


def _nats_url(name: str) -> str:
    return f"{NATS}?stream={name}&prefix={name}"


def micro_on(url: Callable[[], str]) -> Callable[[Handled], Any]:
    return lambda handled: micro(url(), handled)


SCENARIOS: dict[str, Callable[[Handled], Any]] = {
    "memory": micro_on(lambda: f"memory://{uuid.uuid4().hex}"),
    "memory-broker": memory_broker,
    "http": micro_http,
    "nats": micro_on(lambda: _nats_url(f"bench_{uuid.uuid4().hex[:8]}")),
    "nats-py-js": nats_py_js,
    "nats-py-core": nats_py_core,
    "faststream": faststream_js,
    "redis": micro_on(lambda: f"{REDIS}?prefix=bench-{uuid.uuid4().hex[:8]}"),
    "redis-py": redis_py,
    "amqp": micro_on(lambda: f"{AMQP}?exchange=bench-{uuid.uuid4().hex[:8]}"),
    "aio-pika": aio_pika_raw,
}
IN_PROCESS = {"memory", "memory-broker"}
"""Their publish has nothing to wait for: published one after the other, not in a window."""
RATIOS = [
    ("nats", "nats-py-js"),
    ("nats", "faststream"),
    ("nats", "nats-py-core"),
    ("redis", "redis-py"),
    ("amqp", "aio-pika"),
    ("memory", "memory-broker"),
]


async def one_round(
    name: str, events: int, window: int, timeout: float
) -> tuple[float, float, float, float]:
    latencies: list[float] = []
    done = asyncio.Event()

    def handled(sent_at: float) -> None:
        latencies.append(time.perf_counter() - sent_at)
        if len(latencies) >= events:
            done.set()

    async with SCENARIOS[name](handled) as publish:
        # A few events first: connections, consumers and caches warm.
        for _ in range(20):
            await publish(time.perf_counter())
        await asyncio.wait_for(_until(lambda: len(latencies) >= 20), timeout)
        latencies.clear()
        slots = asyncio.Semaphore(window)

        async def send() -> None:
            try:
                await publish(time.perf_counter())
            finally:
                slots.release()

        started, cpu = time.perf_counter(), time.process_time()
        if name in IN_PROCESS:
            for _ in range(events):
                await publish(time.perf_counter())
        else:
            tasks = []
            for _ in range(events):
                await slots.acquire()
                tasks.append(asyncio.create_task(send()))
            await asyncio.gather(*tasks)
        await asyncio.wait_for(done.wait(), timeout)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
    ordered = sorted(latencies)
    return (
        events / elapsed,
        ordered[len(ordered) // 2] * 1000,
        ordered[int(len(ordered) * 0.99)] * 1000,
        cpu / events * 1e6,
    )


async def _until(check: Callable[[], bool]) -> None:
    while not check():  # noqa: ASYNC110 - polls a counter the handler bumps
        await asyncio.sleep(0.005)


async def available(name: str) -> bool:
    try:
        await asyncio.wait_for(one_round(name, 50, 8, 10.0), 20.0)
    except Exception as exc:  # any failure leaves the scenario out, saying why
        print(f"  {name}: left out ({type(exc).__name__}: {exc})", flush=True)
        return False
    return True


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--only", default=",".join(SCENARIOS))
    parser.add_argument("--gc-freeze", action=argparse.BooleanOptionalAction, default=True)
    options = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    # Services run as ``asgi-micro run`` runs them: each freezes the heap once started
    os.environ["MICRO_GC_FREEZE"] = "true" if options.gc_freeze else "false"
    wanted = [name for name in options.only.split(",") if name]
    unknown = set(wanted) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; expected some of {list(SCENARIOS)}")
    names = [name for name in wanted if await available(name)]
    if options.gc_freeze:  # and the raw clients alike: every one is imported and warm by now
        from asgi_micro.heap import freeze_startup_heap

        freeze_startup_heap()
    results = {name: Result() for name in names}
    print(
        f"{options.rounds} rounds x {options.events} events, window {options.window}, "
        f"start-up heap {'frozen' if options.gc_freeze else 'not frozen'}"
    )
    for number in range(1, options.rounds + 1):
        order = random.sample(names, len(names))
        for name in order:
            rate, p50, p99, cpu = await one_round(
                name, options.events, options.window, options.timeout
            )
            result = results[name]
            result.rate.append(rate)
            result.p50.append(p50)
            result.p99.append(p99)
            result.cpu.append(cpu)
        line = ", ".join(f"{name} {results[name].rate[-1]:,.0f}" for name in names)
        print(f"  round {number}/{options.rounds}: {line}", flush=True)
    print("\nmedians: events/s, publish-to-handled latency, this process's CPU per event")
    for name in names:
        result = results[name]
        print(
            f"  {name:15s} {statistics.median(result.rate):>10,.0f} events/s"
            f"   p50 {statistics.median(result.p50):7.2f} ms   p99 {statistics.median(result.p99):7.2f} ms"
            f"   CPU {statistics.median(result.cpu):6.1f} us"
        )
    print("\nratios (events/s, medians)")
    for ours, theirs in RATIOS:
        if ours in results and theirs in results:
            ratio = statistics.median(results[ours].rate) / statistics.median(results[theirs].rate)
            cpu = statistics.median(results[theirs].cpu) / statistics.median(results[ours].cpu)
            print(f"  {ours}/{theirs}: {ratio:.3f}x by events/s, {cpu:.3f}x by CPU per event")


if __name__ == "__main__":
    asyncio.run(main())
