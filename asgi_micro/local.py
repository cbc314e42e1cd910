"""In-process calls: a call to a node this process serves skips sockets and codecs.

Several services may run in one process (``asgi-micro run a.py b.py``, ``asgi_micro.group``,
``asgi_micro.testing.Cluster``). When a client picks a node that is served in the same process,
the call does not go over loopback: the request is validated into the endpoint's request model
from a copy of it (so the callee never shares the caller's objects, and validation fails the same
as over the wire), and runs through the callee's own pipeline, wrappers, dependencies and
deadline, counted in flight like any call. The reply comes back as a copy too: a
``response_model`` instance when the caller asked for one, else the JSON-shaped value an HTTP
call would have decoded. Errors arrive as the same ``MicroError`` classes, with the same ids.

Which node gets a call does not change: the client's selection, retries, ejection and policies
work as for remote nodes, and a node in the same process is one of the service's nodes. A
service moved to a process of its own keeps working with no code change; only the transport
differs. What needs FastAPI's own machinery (an RPC with a plain ``Depends``, a ``Request``
parameter, router-level dependencies, ``dependency_overrides`` in force), streams, and plain
HTTP routes still go over the wire.

Calls in process have the protocol ``local`` in the pipeline (wrappers, metrics, tracing).
``MICRO_LOCAL_CALLS=false`` (or ``Client(local=False)``) sends every call over the wire.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Generator, Iterator
from typing import TYPE_CHECKING, Any, Final

from fastapi.routing import iter_route_contexts
from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic import BaseModel, ValidationError

from .context import Context
from .errors import CLIENT_ID, BadRequest, InternalServerError, MicroError, Timeout
from .messages import MessageType
from .pipeline import Call
from .router import MicroRoute

if TYPE_CHECKING:
    from .pipeline import Host
    from .rpc import RPC
    from .types import ASGIApp

__all__ = ["PROTOCOL", "LocalNode", "node", "serve", "served", "withdraw"]

logger = logging.getLogger(__name__)

PROTOCOL: Final = "local"
"""``Call.protocol`` of a call made in process."""

_served: dict[str, LocalNode] = {}


class LocalNode:
    """A node this process serves: its service (the pipeline's host) and the RPC endpoints
    that can be called in process, by name."""

    __slots__ = ("app", "host", "rpcs")

    def __init__(self, host: Host, app: ASGIApp) -> None:
        self.host = host
        self.app = app
        self.rpcs: dict[str, RPC] = {rpc.name: rpc for rpc in _callable_here(app)}

    def rpc(self, endpoint: str) -> RPC | None:
        """The RPC ``endpoint`` names, when it can be called in process now."""
        rpc = self.rpcs.get(endpoint)
        has_dependencies = rpc is not None and (rpc.resolvers or rpc.scoped)
        if has_dependencies and getattr(self.app, "dependency_overrides", None):
            return None  # FastAPI resolves overridden dependencies: go over the wire
        return rpc

    async def call(
        self,
        rpc: RPC,
        request: Any,
        context: Context,
        response_type: MessageType | None,
        attempt: float | None = None,
    ) -> Any:
        """Run ``rpc`` with a copy of ``request`` through the node's pipeline, as the node
        would a call that arrived with ``context``; the reply copied into ``response_type``
        (a JSON-shaped value without one). ``attempt`` is the caller's time for this attempt
        when shorter than the call's: past it the node has not answered in time, as a client
        timeout says over the wire."""
        host = self.host
        pipeline = host.pipeline
        name = host.name
        # The callee's own context, read from the caller's as a node reads its headers.
        if host.trust_callers:
            context = Context(
                dict(context.metadata), context.deadline, dict(context.trace), context.authorization
            )
        else:  # what a caller says goes no further than over HTTP; its deadline is the call's
            context = Context(
                deadline=context.deadline,
                trace=dict(context.trace),
                authorization=context.authorization,
            )
        pipeline.begin()
        failed = True
        try:
            try:
                decoded = (
                    None
                    if rpc.request is None
                    else rpc.request.validate_python(_plain(request, rpc.request))
                )
            except ValidationError as exc:
                raise BadRequest.from_validation(exc, id=name) from None
            call = Call(rpc.name, PROTOCOL, context, host=host, request=decoded, rpc=rpc)
            result = await _within(context, pipeline.handler(rpc)(call), attempt, name)
            reply = _reply(rpc, result)
            failed = False
        except MicroError as exc:
            failed = exc.code >= 500
            raise _copy(exc, name) from None
        except Exception:
            logger.exception("%s failed", rpc.name)
            raise InternalServerError(id=name) from None
        finally:
            pipeline.end(failed=failed)
        return reply if response_type is None else response_type.validate_python(reply)


async def _within(
    context: Context, reply: Awaitable[Any], attempt: float | None, service: str
) -> Any:
    """``reply`` with ``context`` current, within its deadline and the ``attempt``'s time.

    A timer is most of what a call in process would cost, and a deadline can only end a call
    where it waits: so the handler first runs up to its first wait, and only a handler that
    waits gets a timer, one for both limits, for the rest of its run. A handler that never
    waits ends the same as under a timer that did not fire."""
    token = context.activate()
    try:
        left = context.remaining()
        limit = left if attempt is None or (left is not None and left <= attempt) else attempt
        if limit is not None and limit <= 0:
            if asyncio.iscoroutine(reply):
                reply.close()
            raise Timeout("deadline exceeded before the handler started")
        steps = reply.__await__()
        try:
            waiting_on = steps.send(None)
        except StopIteration as done:
            return done.value
        rest = _Rest(steps, waiting_on)
        if limit is None:
            return await rest
        timer = asyncio.timeout_at(asyncio.get_running_loop().time() + limit)
        try:
            async with timer:
                return await rest
        except TimeoutError:
            if not timer.expired():
                raise
            if limit is attempt:
                raise Timeout(f"no reply from {service} in time", id=CLIENT_ID) from None
            raise Timeout("deadline exceeded") from None
    finally:
        Context.reset(token)


class _Rest:
    """The rest of a coroutine that was started by hand and is waiting on ``waiting_on``:
    awaiting it hands that wait to the task, and goes on as ``await`` would have (values and
    exceptions, cancellation included, passed through)."""

    __slots__ = ("steps", "waiting_on")

    def __init__(self, steps: Generator[Any, Any, Any], waiting_on: Any) -> None:
        self.steps = steps
        self.waiting_on = waiting_on

    def __await__(self) -> Generator[Any, Any, Any]:
        steps, waiting_on = self.steps, self.waiting_on
        while True:
            try:
                sent = yield waiting_on
            except GeneratorExit:
                steps.close()
                raise
            except BaseException as exc:  # thrown in by the task: cancellation
                try:
                    waiting_on = steps.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    waiting_on = steps.send(sent)
                except StopIteration as done:
                    return done.value


def serve(node_id: str, host: Host, app: ASGIApp) -> None:
    """Take calls in process for ``node_id`` (a service that started serving ``app``)."""
    _served[node_id] = LocalNode(host, app)


def withdraw(node_id: str) -> None:
    """No more calls in process for ``node_id`` (its service stopped)."""
    _served.pop(node_id, None)


def node(node_id: str) -> LocalNode | None:
    """The node ``node_id`` when this process serves it."""
    return _served.get(node_id)


def served() -> bool:
    """Whether this process serves any node (else no call needs looking up)."""
    return bool(_served)


def _callable_here(app: Any) -> Iterator[RPC]:
    """The unary RPCs of ``app`` that FastAPI need not resolve: served on the fast path over
    HTTP (``MicroRoute.fast``), and with no dependencies from ``include_router`` either."""
    for context in iter_route_contexts(getattr(app, "routes", ())):
        route = context.original_route
        if (
            isinstance(route, MicroRoute)
            and route.fast
            and route.rpc is not None
            and route.rpc.kind == "unary"
            and not getattr(context, "dependencies", None)
        ):
            yield route.rpc


def _plain(value: Any, message_type: MessageType) -> Any:
    """``value`` as JSON-shaped data, as it would cross the wire: a copy of a model."""
    if value is None:
        return {}
    if isinstance(value, message_type.type):
        return message_type.dump_python(value, mode="json")
    if isinstance(value, BaseModel):
        return value.__pydantic_serializer__.to_python(value, mode="json")
    if isinstance(value, Message):
        return json_format.MessageToDict(value, preserving_proto_field_name=True)
    return value


def _reply(rpc: RPC, result: Any) -> Any:
    """The handler's result as the wire would carry it (validated into the response type)."""
    response = rpc.response
    if response is None:
        return {}
    if not isinstance(result, response.type):
        result = response.validate_python(result)
    return response.dump_python(result, mode="json")


def _copy(error: MicroError, service: str) -> MicroError:
    """The error as the caller would rebuild it from an answer: the same class, code and
    detail, ``service`` as its id when it had none."""
    data = error.to_dict()
    data["id"] = data["id"] or service
    return MicroError.from_dict(data)
