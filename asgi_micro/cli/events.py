"""``asgi-micro publish|subscribe``: events on a broker, from a shell.

    asgi-micro publish user.created '{"name": "Ada"}' -m tenant=acme   # prints the event's id
    asgi-micro subscribe user.created --queue greeter --count 1        # or until Ctrl-C

The broker comes from ``--broker`` or ``MICRO_BROKER``, as a service's does. ``publish`` sends
its JSON argument in the codec of ``--content-type`` (``-`` sends standard input's bytes as
they are); ``subscribe`` prints each event as it arrives: its id, which delivery it is, its
headers and its body (as JSON when it is JSON), or with ``--json`` one JSON object a line. A
subscriber without ``--queue`` sees what is published while it listens; with one it takes its
turn in that queue group, and the events it is given are handled (acked) once printed.
Errors go to standard error with exit status 1 (2 for bad usage).
"""

from __future__ import annotations

import asyncio
import base64
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

import orjson
import typer

from ..broker import DEFAULT_URL, Broker, Event, from_url
from ..broker.base import deadline_header
from ..codec import codec_for_content_type
from ..errors import MicroError
from ..plugins import MissingDependency, Parts
from .common import JsonOption, MetadataOption, errors, pairs

__all__ = ["SOURCE", "event_json", "listen", "publish", "show_event", "subscribe"]

T = TypeVar("T")

SOURCE = "asgi-micro-cli"
"""The ``ce-source`` of what ``asgi-micro publish`` sends."""

BrokerOption = Annotated[
    str,
    typer.Option(
        "--broker",
        envvar="MICRO_BROKER",
        help="Broker URL: nats://127.0.0.1:4222, redis://127.0.0.1:6379, "
        "amqp://guest:guest@127.0.0.1:5672, memory:// (this process only).",
    ),
]


def publish(
    topic: Annotated[str, typer.Argument(help="The topic, e.g. user.created.")],
    message: Annotated[
        str,
        typer.Argument(
            metavar="JSON",
            help="The message as JSON, sent in the codec of --content-type; "
            "- sends the bytes of standard input as they are.",
        ),
    ],
    broker: BrokerOption = DEFAULT_URL,
    metadata: MetadataOption = None,
    content_type: Annotated[
        str,
        typer.Option("--content-type", help="application/json, application/msgpack, or any for -."),
    ] = "application/json",
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout", min=0.001, help="Seconds: the event's deadline (micro-deadline)."
        ),
    ] = None,
) -> None:
    """Publish one event on TOPIC and print its id."""
    body = sys.stdin.buffer.read() if message == "-" else _encode(message, content_type)
    headers = {f"micro-{key.lower()}": value for key, value in pairs(metadata or []).items()}
    if timeout is not None:
        headers.update(deadline_header(time.monotonic() + timeout))
    _warn_if_alone(broker, "what is published here reaches no other process")

    async def send(b: Broker) -> str:
        return await b.publish(topic, body, content_type=content_type, headers=headers)

    typer.echo(_with_broker(broker, send))


def subscribe(
    topic: Annotated[str, typer.Argument(help="The topic, e.g. user.created.")],
    queue: Annotated[
        str | None,
        typer.Option(
            "--queue",
            help="Join this queue group: take turns with its members, who miss "
            "what this one is given.",
        ),
    ] = None,
    broker: BrokerOption = DEFAULT_URL,
    count: Annotated[
        int | None, typer.Option("--count", min=1, help="Stop after this many events.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Print each event on TOPIC as it arrives, until Ctrl-C or --count events."""
    _warn_if_alone(broker, "only events published by this process arrive")
    received = [0]

    def show(event: Event) -> None:
        received[0] += 1
        show_event(event, as_json=as_json)

    def ready() -> None:
        group = f" in queue group {queue!r}" if queue is not None else ""
        stop = f"after {count} event(s) or at Ctrl-C" if count is not None else "at Ctrl-C"
        errors.print(f"listening on {topic}{group} at {_safe(broker)}; stopping {stop}")

    try:
        _with_broker(
            broker, lambda b: listen(b, topic, show, queue=queue, count=count, ready=ready)
        )
    except KeyboardInterrupt:
        errors.print(f"stopped after {received[0]} event(s)")
    except RuntimeError as exc:  # a broker that delivers elsewhere: http:// to served apps
        errors.print(str(exc))
        raise typer.Exit(2) from None


async def listen(
    broker: Broker,
    topic: str,
    show: Callable[[Event], None],
    *,
    queue: str | None = None,
    count: int | None = None,
    ready: Callable[[], None] | None = None,
) -> None:
    """Call ``show`` for each event on ``topic`` as it arrives (one at a time, in order), on a
    started ``broker``; return after ``count`` events, or run until cancelled."""
    shown = 0
    done = asyncio.Event()

    async def handle(event: Event) -> None:
        nonlocal shown
        if count is not None and shown >= count:
            # Fetched while stopping: not handled, so it comes again (to the group's next
            # member), as when a subscriber stops in the middle of a delivery.
            raise asyncio.CancelledError
        shown += 1
        show(event)
        if count is not None and shown >= count:
            done.set()

    subscription = await broker.subscribe(topic, handle, queue=queue, concurrency=1)
    try:
        if ready is not None:
            ready()
        await done.wait()
    finally:
        await broker.unsubscribe(subscription)


def show_event(event: Event, *, as_json: bool = False) -> None:
    """Print ``event``: for people, its id and delivery, headers and body; with ``as_json``,
    ``event_json`` on one line."""
    if as_json:
        sys.stdout.write(orjson.dumps(event_json(event)).decode() + "\n")
        sys.stdout.flush()
        return
    lines = [f"event {event.id} on {event.topic}, delivery {event.deliveries}"]
    lines.extend(f"  {name}: {value}" for name, value in event.headers.items())
    value, encoding = _body(event)
    if encoding == "json":
        lines.append(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())
    elif encoding == "utf-8":
        lines.append(value)
    else:
        lines.append(f"<{len(event.body)} bytes, base64> {value}")
    sys.stdout.write("\n".join(lines) + "\n\n")
    sys.stdout.flush()


def event_json(event: Event) -> dict[str, Any]:
    """``{"topic", "id", "deliveries", "headers", "body", "encoding"}``: ``encoding`` is
    ``json`` (the body is the JSON value), ``utf-8`` (text) or ``base64``."""
    value, encoding = _body(event)
    return {
        "topic": event.topic,
        "id": event.id,
        "deliveries": event.deliveries,
        "headers": event.headers,
        "body": value,
        "encoding": encoding,
    }


def _body(event: Event) -> tuple[Any, str]:
    media = event.content_type.partition(";")[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        try:
            return orjson.loads(event.body), "json"
        except orjson.JSONDecodeError:
            pass
    try:
        return event.body.decode(), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(event.body).decode(), "base64"


def _encode(message: str, content_type: str) -> bytes:
    try:
        value = orjson.loads(message)
    except orjson.JSONDecodeError as exc:
        raise typer.BadParameter(f"not valid JSON: {exc}", param_hint="JSON") from None
    codec = codec_for_content_type(content_type)
    if codec is None:
        raise typer.BadParameter(
            f"no codec writes {content_type!r}; send its bytes with - instead",
            param_hint="--content-type",
        )
    try:
        return codec.encode(value)
    except (TypeError, ValueError, MicroError) as exc:  # protobuf needs the message's type
        raise typer.BadParameter(
            f"cannot write this JSON as {content_type} without its message type ({exc}); "
            "send its bytes with - instead",
            param_hint="--content-type",
        ) from None


def _with_broker(url: str, action: Callable[[Broker], Awaitable[T]]) -> T:
    async def go() -> T:
        broker = from_url(url, parts=Parts(service=SOURCE))
        broker.source = broker.source or SOURCE
        async with broker:
            return await action(broker)

    try:
        return asyncio.run(go())
    except (ValueError, MissingDependency) as exc:
        errors.print(str(exc))
        raise typer.Exit(2) from None
    except MicroError as exc:
        sys.stderr.write(exc.to_json().decode() + "\n")
        raise typer.Exit(1) from None


def _warn_if_alone(url: str, consequence: str) -> None:
    if urlsplit(url).scheme.lower() == "memory":
        errors.print(
            f"note: {url} is a broker inside this command: {consequence}; "
            "name the broker with --broker or MICRO_BROKER"
        )


def _safe(url: str) -> str:
    """``url`` without its credentials and query, which may hold a password."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
