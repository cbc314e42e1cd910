"""A service's events: ``@service.subscribe(topic)`` handlers and ``service.publish``.

    @service.subscribe("user.created", queue="greeter")
    async def on_user_created(user: User, store: Store) -> None: ...

    await service.publish("user.created", User(name="Ada"))

A subscriber is declared like an RPC handler (``asgi_micro.rpc``): one parameter typed by a
message (a pydantic model, a protobuf class), dependencies asgi-micro resolves on its own
(``Store``, ``Context``, ``CurrentService``...). Each event is decoded by its content type and
runs through the service's pipeline, so the server wrappers see it as a call whose ``protocol``
is ``event`` and whose ``endpoint`` is the topic, counted in flight like any call. A handler
that returns acks the event; one that raises has it delivered again; one that cannot decode it
sends it to the dead-letter topic at once (see ``asgi_micro.broker``).

Publishing goes through the client's wrappers, as a ``ClientCall`` with protocol ``event``.
What travels with an event is what travels with a call: the metadata the propagation
allow-list names, ``from-service``, the trace; a deadline only when ``publish`` is given a
``timeout`` (an event outlives the call that published it, so it does not inherit that call's
deadline). A handler runs within the event's deadline, if it has one; an event whose deadline
passed before it arrived is dead-lettered as a ``Timeout``.

``service.publishes("user.created", User)`` declares a topic the service publishes: the
AsyncAPI document (``asgi_micro.asyncapi``) lists it, and ``publish`` on it takes a ``User``
or what validates into one (a dict), encoded as a ``User``; anything else raises
``ValueError`` before it reaches the broker, rather than at every subscriber as a dead letter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from .broker.base import (
    DEFAULT_MAX_DELIVERIES,
    Broker,
    Event,
    Subscription,
    deadline_header,
    deadline_of,
    headers_of,
    new_event_id,
)
from .client.calls import ClientCall
from .codec import JSON, codec_for_content_type
from .context import Context, read_metadata, within_deadline
from .errors import BadRequest, Forbidden, Timeout, Unauthorized, UnsupportedMediaType
from .messages import MessageType
from .pipeline import Call
from .rpc import RPC

if TYPE_CHECKING:
    from .service import Service

__all__ = ["Events", "Publication", "Publisher", "Subscriber"]


@dataclass(slots=True, eq=False)
class Subscriber:
    """A handler subscribed to ``topic``: how it is delivered, and the ``RPC`` read off it."""

    topic: str
    rpc: RPC
    queue: str | None = None
    concurrency: int = 16
    max_deliveries: int = DEFAULT_MAX_DELIVERIES
    subscription: Subscription | None = field(default=None, repr=False)

    @classmethod
    def of(
        cls,
        topic: str,
        handler: Callable[..., Any],
        *,
        queue: str | None,
        concurrency: int,
        max_deliveries: int,
    ) -> Subscriber:
        rpc = RPC.from_handler(topic, handler, idempotent=False)
        if rpc.server_streaming or rpc.client_streaming:
            raise TypeError(f"{topic}: an event handler takes one message and returns nothing")
        if not rpc.is_async:
            raise TypeError(f"{topic}: an event handler must be async")
        if not rpc.standalone:
            raise TypeError(
                f"{topic}: an event handler's parameters can only be its message and asgi-micro "
                "dependencies (asgi_micro.fastapi): there is no HTTP request to read others from"
            )
        if concurrency < 1 or max_deliveries < 1:
            raise ValueError("concurrency and max_deliveries must be at least 1")
        return cls(topic, rpc, queue, concurrency, max_deliveries)


@dataclass(frozen=True, slots=True)
class Publication:
    """A topic the service publishes and the type of its messages (``service.publishes``):
    what the AsyncAPI document lists, and what ``publish`` checks a message against."""

    topic: str
    message: MessageType
    description: str | None = None

    def conform(self, message: Any) -> Any:
        """``message`` as the declared type: an instance as it is, anything else (a dict)
        validated into it. One that does not fit is the publisher's bug, not a bad request:
        ``ValueError`` (a handler publishing it fails with a 500, not its caller's 400)."""
        declared = self.message.type
        if isinstance(declared, type) and isinstance(message, declared):
            return message
        try:
            return self.message.validate_python({} if message is None else message)
        except (ValidationError, BadRequest) as exc:
            detail = exc.detail if isinstance(exc, BadRequest) else str(exc)
            raise ValueError(
                f"{self.topic}: the message is not the {self.message!r} declared with "
                f"service.publishes: {detail}"
            ) from exc


class Events:
    """The part of a service that runs its subscribers on its broker: ``start`` subscribes
    each, ``stop`` unsubscribes them once the events being handled are done. ``published``
    holds the topics the service declared it publishes."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.subscribers: list[Subscriber] = []
        self.published: dict[str, Publication] = {}

    def declare(self, publication: Publication) -> None:
        found = self.published.get(publication.topic)
        if found is not None and found.message is not publication.message:
            raise ValueError(
                f"{publication.topic}: declared already with {found.message!r}, "
                f"not {publication.message!r}"
            )
        self.published[publication.topic] = publication

    def add(self, subscriber: Subscriber) -> None:
        if any(s.subscription is not None for s in self.subscribers):
            raise RuntimeError("subscribe before the service starts")
        self.subscribers.append(subscriber)

    async def start(self) -> None:
        broker = self.service.broker
        for subscriber in self.subscribers:
            if subscriber.subscription is None:
                subscriber.subscription = await broker.subscribe(
                    subscriber.topic,
                    self._handler(subscriber),
                    queue=subscriber.queue,
                    concurrency=subscriber.concurrency,
                    max_deliveries=subscriber.max_deliveries,
                )

    async def stop(self) -> None:
        broker = self.service.broker
        for subscriber in self.subscribers:
            subscription, subscriber.subscription = subscriber.subscription, None
            if subscription is not None:
                await broker.unsubscribe(subscription)

    def _handler(self, subscriber: Subscriber) -> Callable[[Event], Any]:
        service = self.service
        pipeline = service.pipeline
        rpc = subscriber.rpc
        trusted = service.trust_callers

        async def handle(event: Event) -> None:
            pipeline.begin()
            failed = False
            try:
                request = _decode(event, rpc, service.name)
                context = _context(event, trusted)
                remaining = context.remaining()
                if remaining is not None and remaining <= 0:
                    expired = Timeout(
                        f"event {event.id} arrived after its deadline", id=service.name
                    )
                    expired.undeliverable = True  # type: ignore[attr-defined]
                    raise expired
                call = Call(
                    event.topic,
                    "event",
                    context,
                    host=service,
                    request=request,
                    content_type=event.content_type,
                    rpc=rpc,
                )
                call.state["event"] = event
                handler = pipeline.handler(rpc)
                if context.deadline is None:
                    token = context.activate()
                    try:
                        await handler(call)
                    finally:
                        Context.reset(token)
                else:
                    await within_deadline(context, handler(call))
            except (BadRequest, Unauthorized, Forbidden):
                raise  # the event's fault, not the service's: dead-lettered, not an error
            except Exception:
                failed = True
                raise
            finally:
                pipeline.end(failed=failed)

        return handle


def _decode(event: Event, rpc: RPC, error_id: str) -> Any:
    codec = codec_for_content_type(event.content_type)
    if codec is None:
        raise UnsupportedMediaType(
            f"event {event.id} has content type {event.content_type!r}, which no codec reads",
            id=error_id,
        )
    try:
        return codec.decode(event.body, rpc.request) if rpc.request is not None else None
    except ValidationError as exc:
        raise BadRequest.from_validation(exc, id=error_id) from None


def _context(event: Event, trusted: bool) -> Context:
    found = read_metadata(
        [(name, value) for name, value in event.headers.items() if name != "micro-deadline"],
        trusted=trusted,  # else only what a caller cannot forge: the trace, and a token auth checks
    )
    context = found or Context()
    context.deadline = deadline_of(event)
    return context


class Publisher:
    """Publishes on behalf of a service: the ``Broker`` dependency of handlers and routes."""

    __slots__ = ("service",)

    def __init__(self, service: Service) -> None:
        self.service = service

    async def publish(
        self,
        topic: str,
        message: Any,
        *,
        metadata: Mapping[str, str] | None = None,
        timeout: float | None = None,
        content_type: str = "application/json",
    ) -> str:
        """Publish ``message`` (a model, a dict) on ``topic``; returns the event's id once the
        broker has accepted it. ``metadata`` joins what the allow-list propagates; ``timeout``
        gives the event a deadline."""
        service = self.service
        declared = service.events.published.get(topic)
        if declared is not None:
            message = declared.conform(message)
        client = service.client
        context = client._context(None, metadata)
        context.deadline = None
        if timeout is not None:
            context = context.onward(timeout=timeout, propagate=("*",))
        call = ClientCall(topic, topic, "event", context, request=message, kind="publish")
        send = self._send(content_type, declared.message if declared is not None else None)
        result: str = await client._run(call, send)
        return result

    def _send(
        self, content_type: str, message_type: MessageType | None
    ) -> Callable[[ClientCall], Any]:
        broker: Broker = self.service.broker

        guard = self.service.guard

        async def send(call: ClientCall) -> str:
            codec = codec_for_content_type(content_type) or JSON
            message = call.request
            body = codec.encode({} if message is None else message, message_type)
            context = call.context
            headers = headers_of(context.headers())
            headers.update(deadline_header(context.deadline))
            event_id = None
            if guard.on:  # a token for this event alone, not the service's token for calls
                event_id = new_event_id()
                token = guard.event_identity(call.endpoint, event_id, body)
                if token is not None:
                    headers["authorization"] = token
            return await broker.publish(
                call.endpoint,
                body,
                content_type=codec.content_type,
                headers=headers,
                event_id=event_id,
            )

        return send
