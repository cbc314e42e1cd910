"""Calling services by name: ``await service.client.call("greeter", "Greeter.Hello", {...})``.

Each call resolves the service through a registry cache kept fresh by ``watch``, filters the
nodes (version, metadata labels), leaves out nodes ejected for failing, picks one with the
client's strategy, sends the context along (metadata, trace, the time left) and decodes the reply,
or raises the error the server sent as the same class of ``asgi_micro.errors``. Failures that are
safe to retry are retried on another node, within the caller's deadline (see ``retry``).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, overload

import httpx
import orjson
from pydantic import BaseModel

from .. import local
from ..codec import JSON, MessageType, codec_for_content_type, message_type
from ..context import Context, current_context
from ..errors import (
    CLIENT_ID,
    BadGateway,
    BadRequest,
    ConnectionFailed,
    ConnectionLost,
    MicroError,
    ServiceUnavailable,
    Timeout,
)
from ..naming import default_path
from ..pipeline import check_wrapper, compose
from ..registry import Node, Registry
from ..registry import Service as ServiceRecord
from .cache import RegistryCache
from .calls import ClientCall, ClientNext, ClientWrapper
from .guards import Guards
from .http import HTTPTransport
from .outliers import OutlierDetector, unavailable_answer
from .policies import Policies
from .retry import Backoff, retryable
from .selector import Strategy, candidates, strategy_named
from .typed import typed as bind_typed

if TYPE_CHECKING:
    from .grpc import GrpcTransport
    from .typed import TypedClient

__all__ = ["CLIENT_ID", "Client", "ClientCall", "ClientNext", "ClientWrapper", "Faults"]
# CLIENT_ID stays importable from here, where it always was.

T = TypeVar("T")
TC = TypeVar("TC", bound="TypedClient")
TRUST_WAIT = 2.5
"""Seconds a call waits for a node whose registration verifies when only others are known: a
lookup returns on the first answer, and an mDNS responder that has just answered another
asker waits up to 1.2 s before it answers again (RFC 6762, section 6)."""
Transport = Literal["http", "grpc"]


class Faults(Protocol):
    """What a test puts between a client and the nodes it calls (``asgi_micro.testing``):
    ``before`` runs ahead of every attempt on ``node`` and may wait (a slow link), or raise
    what the attempt would have (a refused connection, an error answer, a timeout once
    ``seconds``, the attempt's time, are up)."""

    async def before(
        self, caller: str | None, service: str, node: Node, seconds: float | None
    ) -> None: ...


class Client:
    """Calls other services. Options are the defaults of every call; most can be set per call.

    ``retries`` is the number of extra attempts a failed call may make, ``strategy`` one of
    ``random`` (default), ``round_robin``, ``least_outstanding``, ``p2c`` or a ``Strategy``;
    ``policies`` hold targets to timeouts, retries, breakers... (``asgi_micro.client.policies``).
    ``local`` (default: ``MICRO_LOCAL_CALLS``, on) calls a node this process serves in process,
    without sockets or codecs (``asgi_micro.local``).
    """

    def __init__(
        self,
        *,
        registry: Registry,
        caller: str | None = None,
        transport: HTTPTransport | None = None,
        timeout: float = 5.0,
        retries: int = 2,
        backoff: Backoff | None = None,
        strategy: Strategy | str = "random",
        outliers: OutlierDetector | None = None,
        cache_refresh: float = 30.0,
        propagate: Collection[str] = (),
        wrappers: Sequence[ClientWrapper] = (),
        identity: Callable[[], str | None] | None = None,
        trusts: Callable[[str, Node], bool] | None = None,
        policies: Policies | None = None,
        local: bool | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.registry = registry
        self.caller = caller
        self.identity = identity
        """The ``Authorization`` value of the caller's own token, for calls to nodes found
        through the registry (a service's, when its auth is on)."""
        self.trusts = trusts
        """Whether a node's registration is trusted; nodes that are not get no calls."""
        self.propagate = tuple(propagate)
        self.wrappers: tuple[ClientWrapper, ...] = ()
        for wrapper in wrappers:
            self.wrap(wrapper)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff or Backoff()
        self.strategy = strategy_named(strategy) if isinstance(strategy, str) else strategy
        self.outliers = outliers or OutlierDetector()
        self.guards = Guards(policies or Policies())
        self.cache = RegistryCache(registry, refresh=cache_refresh, error_id=CLIENT_ID)
        self.transport = transport or HTTPTransport()
        if local is None:
            from ..settings import Settings

            local = Settings().local_calls
        self.local = local
        """Whether a node served in this process is called in process."""
        self._owns_transport = transport is None
        self._by_address: dict[str, ServiceRecord] = {}
        self._grpc: GrpcTransport | None = None
        self.faults: Faults | None = None
        """Faults injected ahead of every attempt, in tests (``asgi_micro.testing.Cluster``)."""

    @overload
    async def call(
        self,
        service: str,
        endpoint: str,
        request: Any = None,
        *,
        response_model: type[T],
        timeout: float | None = None,
        metadata: Mapping[str, str] | None = None,
        address: str | None = None,
        content_type: str = "application/json",
        retries: int | None = None,
        version: str | None = None,
        labels: Mapping[str, str] | None = None,
        strategy: Strategy | None = None,
        transport: Transport = "http",
    ) -> T: ...

    @overload
    async def call(
        self,
        service: str,
        endpoint: str,
        request: Any = None,
        *,
        response_model: None = None,
        timeout: float | None = None,
        metadata: Mapping[str, str] | None = None,
        address: str | None = None,
        content_type: str = "application/json",
        retries: int | None = None,
        version: str | None = None,
        labels: Mapping[str, str] | None = None,
        strategy: Strategy | None = None,
        transport: Transport = "http",
    ) -> Any: ...

    async def call(
        self,
        service: str,
        endpoint: str,
        request: Any = None,
        *,
        response_model: type[Any] | None = None,
        timeout: float | None = None,
        metadata: Mapping[str, str] | None = None,
        address: str | None = None,
        content_type: str = "application/json",
        retries: int | None = None,
        version: str | None = None,
        labels: Mapping[str, str] | None = None,
        strategy: Strategy | None = None,
        transport: Transport = "http",
    ) -> Any:
        """Call ``endpoint`` (``"Greeter.Hello"``) of ``service`` and return the reply.

        ``request`` is a pydantic model, a dict or ``None``. The reply is a ``response_model``
        instance when one is given, else the decoded value (a dict for JSON). ``timeout``
        (default: the client's) is capped by the deadline of the request being handled, if
        any, and bounds every retry. ``address`` (``host:port``) skips the registry and calls
        that node; ``version`` and ``labels`` (node metadata) narrow the nodes. ``transport``
        is ``"http"`` or ``"grpc"`` (the node's gRPC port, from its registry metadata).
        """
        if transport not in ("http", "grpc"):
            raise ValueError(f"transport is 'http' or 'grpc', got {transport!r}")
        if timeout is None and self.guards.on:
            timeout = self.guards.target(service, endpoint).policy.timeout
        outgoing = ClientCall(
            service,
            endpoint,
            transport,
            self._context(timeout, metadata, resolved=address is None),
            request=request,
            address=address,
        )
        options = _Options(retries, version, labels, strategy)
        if transport == "grpc":
            unary = functools.partial(
                self._grpc_unary, response_model=response_model, options=options
            )
        else:
            unary = functools.partial(
                self._http_unary,
                response_model=response_model,
                content_type=content_type,
                options=options,
            )
        return await self._run(outgoing, unary)

    def typed(
        self, cls: type[TC], *, transport: Transport = "http", version: str | None = None
    ) -> TC:
        """A generated client (``asgi-micro client SERVICE``) calling through this one:
        ``service.client.typed(GreeterClient)``."""
        return bind_typed(self, cls, transport=transport, version=version)

    def wrap(self, wrapper: ClientWrapper) -> ClientWrapper:
        """Add a client wrapper: it sees every outgoing ``call``, ``stream`` and ``http()``
        request (see ``asgi_micro.client.calls``); the first added is the outermost. Usable as
        a decorator."""
        check_wrapper(wrapper)
        self.wrappers = (*self.wrappers, wrapper)
        return wrapper

    @property
    def policies(self) -> Policies:
        """The resilience policies by target; setting new ones starts their breakers,
        bulkheads and budgets afresh."""
        return self.guards.policies

    @policies.setter
    def policies(self, policies: Policies) -> None:
        self.guards = Guards(policies)

    async def _run(self, call: ClientCall, handler: ClientNext) -> Any:
        if self.guards.on and call.kind in ("unary", "http"):
            handler = functools.partial(self.guards.run, next=handler)  # inside the wrappers
        if not self.wrappers:
            return await handler(call)
        return await compose(self.wrappers, handler)(call)

    async def _grpc_unary(
        self, call: ClientCall, *, response_model: type[Any] | None, options: _Options
    ) -> Any:
        service, address = call.service, call.address
        # A gRPC address speaks no HTTP/1.1 to describe itself: go by convention then.
        records = [] if address else await self._records(service, address)
        grpc_path, _, idempotent = _grpc_route(service, call.endpoint, records)

        async def attempt(node: Node, remaining: float | None) -> Any:
            return await self.grpc.unary(
                _grpc_address(node, address),
                grpc_path,
                call.request,
                response_model=response_model,
                metadata=call.context.headers(),
                timeout=remaining,
                service=service,
            )

        return await self._attempts(
            call,
            self._here(call, attempt, response_model),
            idempotent,
            options,
            usable=_serves_grpc,
        )

    async def _http_unary(
        self,
        call: ClientCall,
        *,
        response_model: type[Any] | None,
        content_type: str,
        options: _Options,
    ) -> Any:
        service = call.service
        codec = codec_for_content_type(content_type)
        if codec is None:
            raise ValueError(f"no codec for content type {content_type!r}")
        reply_type = None if response_model is None else message_type(response_model)
        records = await self._records(service, call.address)
        method, path, idempotent = _route(call.endpoint, records)
        base_headers = [("content-type", codec.content_type), ("accept", codec.content_type)]
        body: bytes | None = None  # encoded for the first attempt that goes over the wire

        async def attempt(node: Node, remaining: float | None) -> Any:
            nonlocal body
            if body is None:
                body = codec.encode({} if call.request is None else call.request)
            response = await self.transport.request(
                node.host,
                node.port,
                method,
                path,
                headers=[*base_headers, *call.context.headers()],
                body=body,
                timeout=remaining,
            )
            if 200 <= response.status < 300:
                reply_codec = codec_for_content_type(
                    (response.header(b"content-type") or b"").decode("latin-1")
                )
                if reply_codec is None:
                    raise BadGateway(
                        f"{service} replied with an unsupported content type", id=CLIENT_ID
                    )
                try:
                    return reply_codec.decode(response.body, reply_type)
                except BadRequest as exc:  # the reply is broken: the node's fault, not ours
                    raise BadGateway(
                        f"{service} sent a reply that does not decode: {exc.detail}", id=CLIENT_ID
                    ) from None
            raise MicroError.from_body(response.status, response.body, id=service)

        return await self._attempts(
            call, self._here(call, attempt, response_model), idempotent, options
        )

    def _here(
        self,
        call: ClientCall,
        attempt: Callable[[Node, float | None], Awaitable[Any]],
        response_model: type[Any] | None,
    ) -> Callable[[Node, float | None], Awaitable[Any]]:
        """``attempt``, except on a node this process serves: there the call is made in
        process (``asgi_micro.local``) when the endpoint allows it."""
        if not (self.local and local.served()) or call.address is not None:
            return attempt
        reply_type = None if response_model is None else message_type(response_model)

        def here_or_there(node: Node, remaining: float | None) -> Awaitable[Any]:
            served = local.node(node.id)
            rpc = None if served is None else served.rpc(call.endpoint)
            if served is None or rpc is None:
                return attempt(node, remaining)
            return served.call(rpc, call.request, call.context, reply_type, remaining)

        return here_or_there

    async def _attempts(
        self,
        call: ClientCall,
        attempt: Callable[[Node, float | None], Awaitable[T]],
        idempotent: bool,
        options: _Options,
        *,
        usable: Callable[[Node], bool] | None = None,
    ) -> T:
        return await self.attempts(
            call.service,
            attempt,
            context=call.context,
            idempotent=idempotent,
            retries=self._retries(call, options),
            address=call.address,
            version=options.version,
            labels=options.labels,
            strategy=options.strategy,
            usable=usable,
            endpoint=call.endpoint,
        )

    def _retries(self, call: ClientCall, options: _Options) -> int:
        """The call's own retries, else its target's policy's, else the client's."""
        if options.retries is not None:
            return options.retries
        if self.guards.on and call.kind == "unary":
            retries = self.guards.target(call.service, call.endpoint).policy.retries
            if retries is not None:
                return retries
        return self.retries

    async def stream(
        self,
        service: str,
        endpoint: str,
        request: Any = None,
        *,
        response_model: type[Any] | None = None,
        request_model: type[Any] | None = None,
        timeout: float | None = None,
        metadata: Mapping[str, str] | None = None,
        address: str | None = None,
        transport: Transport = "http",
        version: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> AsyncGenerator[Any, None]:
        """Iterate over the replies of a streaming endpoint.

        For a server-streaming endpoint ``request`` is one request; for a client- or
        bidirectional-streaming one (gRPC only) it is an iterable or async iterable of requests
        (of ``request_model`` when they are not dicts). A client-streaming endpoint yields its
        one reply. Opening the stream fails over to another node like a call when nothing was
        sent; once replies flow, a failure ends the stream with the error. The deadline covers
        the whole stream; close the iterator (``contextlib.aclosing``) to stop early.
        """
        if transport not in ("http", "grpc"):
            raise ValueError(f"transport is 'http' or 'grpc', got {transport!r}")
        records = [] if address and transport == "grpc" else await self._records(service, address)
        kind = _stream_kind(endpoint, records, request)
        if transport == "http" and kind != "server":
            raise ValueError(
                f"{endpoint} streams requests: call it with transport='grpc' "
                "(over HTTP it is a WebSocket)"
            )
        outgoing = ClientCall(
            service,
            endpoint,
            transport,
            self._context(timeout, metadata, resolved=address is None),
            request=request,
            kind=kind,
            address=address,
        )
        opening = functools.partial(
            self._open_stream,
            records=records,
            response_model=response_model,
            request_model=request_model,
            options=_Options(None, version, labels, None),
        )
        replies: AsyncIterator[Any] = await self._run(outgoing, opening)
        try:
            async for reply in replies:
                yield reply
        finally:
            await _close(replies)

    async def _open_stream(
        self,
        call: ClientCall,
        *,
        records: list[ServiceRecord],
        response_model: type[Any] | None,
        request_model: type[Any] | None,
        options: _Options,
    ) -> AsyncIterator[Any]:
        """The stream ``call`` opens, once its first reply came (or it ended without one)."""
        service, address, request, kind = call.service, call.address, call.request, call.kind
        if call.protocol == "grpc":
            grpc_path, _, _ = _grpc_route(service, call.endpoint, records)

            def open_stream(node: Node, remaining: float | None) -> AsyncIterator[Any]:
                grpc_address = _grpc_address(node, address)
                options: dict[str, Any] = {
                    "response_model": response_model,
                    "metadata": call.context.headers(),
                    "timeout": remaining,
                    "service": service,
                }
                if kind == "server":
                    return self.grpc.server_stream(grpc_address, grpc_path, request, **options)
                if kind == "client":
                    return _one(
                        self.grpc.client_stream(
                            grpc_address, grpc_path, request, request_model=request_model, **options
                        )
                    )
                return self.grpc.bidi_stream(
                    grpc_address, grpc_path, request, request_model=request_model, **options
                )

        else:
            method, path, _ = _route(call.endpoint, records)
            body = JSON.encode({} if request is None else request)
            reply_type = None if response_model is None else message_type(response_model)

            def open_stream(node: Node, remaining: float | None) -> AsyncIterator[Any]:
                return self._ndjson(
                    node, method, path, body, call.context, remaining, reply_type, service
                )

        async def first_reply(
            node: Node, remaining: float | None
        ) -> tuple[Any, AsyncIterator[Any]]:
            replies = open_stream(node, remaining)
            try:
                return await anext(replies), replies
            except StopAsyncIteration:
                return _END, replies
            except BaseException:
                await _close(replies)
                raise

        # Only what failed before sending is tried again.
        first, replies = await self._attempts(
            call,
            first_reply,
            False,
            options,
            usable=_serves_grpc if call.protocol == "grpc" else None,
        )
        return _then(first, replies)

    async def _ndjson(
        self,
        node: Node,
        method: str,
        path: str,
        body: bytes,
        context: Context,
        remaining: float | None,
        reply_type: MessageType | None,
        service: str,
    ) -> AsyncIterator[Any]:
        headers = [
            ("content-type", JSON.content_type),
            ("accept", "application/x-ndjson"),
            *context.headers(),
        ]
        async with self.transport.stream(
            node.host, node.port, method, path, headers=headers, body=body, timeout=remaining
        ) as response:
            if not 200 <= response.status < 300:
                raise MicroError.from_body(
                    response.status, b"".join([chunk async for chunk in response]), id=service
                )
            pending = b""
            async for chunk in response:
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()
                for line in lines:
                    if line.strip():
                        yield _stream_line(line, reply_type, service)
            if pending.strip():
                yield _stream_line(pending, reply_type, service)

    def http(self, **options: Any) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` where ``http://<service>/path`` is resolved through the
        registry with this client's selection, retries and ejection; hosts with a port or an IP
        address are called directly. Options go to ``httpx.AsyncClient``."""
        from .discovery import DiscoveryTransport

        return httpx.AsyncClient(transport=DiscoveryTransport(self), **options)

    async def attempts(
        self,
        service: str,
        attempt: Callable[[Node, float | None], Awaitable[T]],
        *,
        context: Context,
        idempotent: bool,
        retries: int,
        address: str | None = None,
        version: str | None = None,
        labels: Mapping[str, str] | None = None,
        strategy: Strategy | None = None,
        usable: Callable[[Node], bool] | None = None,
        endpoint: str | None = None,
    ) -> T:
        """Run ``attempt(node, seconds)`` on selected nodes (those ``usable`` accepts) until it
        succeeds, a failure may not be retried, the retries are spent or the deadline passes.

        ``seconds`` is the time left, or less for an idempotent call with retries to spare:
        the outlier detector's ``attempt_timeout`` for ``endpoint``, so that a node that does
        not answer leaves time to try another. The target's retry budget, if its policy has
        one, may end the retries sooner."""
        outliers = self.outliers
        key = (service, endpoint) if endpoint is not None else None
        retry_budget = (
            self.guards.target(service, endpoint).budget
            if endpoint is not None and self.guards.on
            else None
        )
        if retry_budget is not None:
            retry_budget.called()
        tried: set[str] = set()
        retry = 0
        while True:
            remaining = context.remaining()
            if remaining is not None and remaining <= 0:
                raise Timeout(f"deadline exceeded calling {service}", id=CLIENT_ID)
            node = await self._select(service, tried, address, version, labels, strategy, usable)
            tried.add(node.id)
            budget = remaining
            if idempotent and retry < retries and key is not None:
                budget = outliers.attempt_timeout(key, remaining)
            cut = budget is not None and (remaining is None or budget < remaining)
            sent_at = outliers.sent(node)
            try:
                if self.faults is not None:
                    await self.faults.before(self.caller, service, node, budget)
                result = await attempt(node, budget)
            except MicroError as exc:
                if _node_failed(exc):
                    outliers.abandoned(node)
                    outliers.failed(node)
                else:
                    outliers.answered(node, sent_at)
                    if unavailable_answer(exc, service):
                        outliers.failed(node)  # up, but says it cannot serve
                    else:
                        outliers.succeeded(node)  # it answered: it is up
                cut_short = cut and _timed_out(exc)
                if retry >= retries or not (
                    cut_short or retryable(exc, idempotent=idempotent, from_client=CLIENT_ID)
                ):
                    raise
                if retry_budget is not None and not retry_budget.withdraw():
                    raise
                retry += 1
                delay = 0.0 if cut_short else self.backoff.delay(retry)
                remaining = context.remaining()
                if remaining is not None and delay >= remaining:
                    raise
                await asyncio.sleep(delay)
            except BaseException:
                outliers.abandoned(node)  # cancelled, or failed in the caller's own code
                raise
            else:
                outliers.answered(node, sent_at, key)
                outliers.succeeded(node)
                return result

    @property
    def grpc(self) -> GrpcTransport:
        """The gRPC transport (channels pooled per node), opened on first use."""
        if self._grpc is None:
            from .grpc import GrpcTransport

            self._grpc = GrpcTransport()
        return self._grpc

    def in_flight(self, node: Node) -> int:
        """Requests this client has outstanding on ``node``."""
        return self.outliers.outstanding(node)

    async def aclose(self) -> None:
        await self.cache.aclose()
        if self._grpc is not None:
            await self._grpc.aclose()
            self._grpc = None
        if self._owns_transport:
            await self.transport.aclose()

    def _context(
        self,
        timeout: float | None,
        metadata: Mapping[str, str] | None,
        *,
        resolved: bool = True,
    ) -> Context:
        """The context of an outgoing call: the current one's deadline, and for a node
        ``resolved`` through the registry its trace and the metadata the allow-list propagates;
        then ``metadata`` and the caller named (each hop names itself). An address the caller
        gave is not known to be one of ours: nothing of the incoming call goes to it."""
        if self.caller:
            metadata = {**(metadata or {}), "from-service": self.caller}
        onward = (current_context() or Context()).onward(
            timeout=self.timeout if timeout is None else timeout,
            metadata=metadata,
            propagate=self.propagate if resolved else (),
        )
        if not resolved:
            onward.trace = {}
        elif self.identity is not None:
            onward.authorization = self.identity()
        return onward

    async def _nodes(
        self,
        service: str,
        version: str | None,
        labels: Mapping[str, str] | None,
        usable: Callable[[Node], bool] | None,
    ) -> tuple[bool, list[Node]]:
        """Whether the service has any node at all, and its nodes that ``usable`` allows."""
        records = await self.cache.get(service)
        nodes = candidates(records, version=version, labels=labels)
        known = any(record.nodes for record in records)
        return known, nodes if usable is None else [node for node in nodes if usable(node)]

    async def _select(
        self,
        service: str,
        tried: set[str],
        address: str | None,
        version: str | None,
        labels: Mapping[str, str] | None,
        strategy: Strategy | None,
        usable: Callable[[Node], bool] | None = None,
    ) -> Node:
        if address is not None:
            return Node(id=address, address=address)
        known, nodes = await self._nodes(service, version, labels, usable)
        if self.trusts is not None and known:
            trusts = self.trusts
            trusted = [node for node in nodes if trusts(service, node)]
            # A lookup may return before the trusted nodes are seen (an impostor answered
            # first, a proof is being fetched): the watch brings them within moments.
            waited = time.monotonic() + TRUST_WAIT
            while not trusted and time.monotonic() < waited:
                await asyncio.sleep(0.05)
                known, nodes = await self._nodes(service, version, labels, usable)
                trusted = [node for node in nodes if trusts(service, node)]
            if nodes and not trusted:
                raise ServiceUnavailable(
                    f"service {service}: {len(nodes)} node(s) found, none whose registration "
                    "verifies under this deployment's keys (auth is on)",
                    id=CLIENT_ID,
                )
            nodes = trusted
        if not nodes:
            wanted = "".join(
                [
                    f" at version {version}" if version else "",
                    f" with labels {dict(labels)}" if labels else "",
                    " serving gRPC" if usable is _serves_grpc else "",
                ]
            )
            raise ServiceUnavailable(
                f"service {service}: no nodes found{wanted} {_where_looked(self.registry)}",
                id=CLIENT_ID,
            )
        now = time.monotonic()
        healthy = [node for node in nodes if self.outliers.available(node, now)]
        pool = (
            [node for node in healthy if node.id not in tried]
            or healthy
            or [node for node in nodes if node.id not in tried]
            or nodes
        )
        return (strategy or self.strategy).pick(service, pool, self.in_flight)

    async def _records(self, service: str, address: str | None) -> list[ServiceRecord]:
        if address is None:
            return await self.cache.get(service)
        record = self._by_address.get(address)
        if record is None:
            record = await self._describe_node(service, address)
            self._by_address[address] = record
        return [record]

    async def _describe_node(self, service: str, address: str) -> ServiceRecord:
        """A node's own record (endpoint paths included), asked of the node itself."""
        node = Node(id=address, address=address)
        try:
            response = await self.transport.request(
                node.host, node.port, "GET", "/_micro/registry", timeout=self.timeout
            )
            if response.status == 200:
                record = ServiceRecord.from_dict(orjson.loads(response.body))
                record.nodes = [node]
                return record
        except (MicroError, ValueError, KeyError):
            pass  # not an asgi-micro node, or an old one: call it by convention
        return ServiceRecord(name=service, nodes=[node])


def _where_looked(registry: Registry) -> str:
    """``in the registry <url>`` (a backend's ``url`` has no credentials), and the usual
    causes from a registry that knows them (``lookup_advice()``, as mDNS has)."""
    hint = registry.lookup_advice()
    return f"in the registry {registry.url or type(registry).__name__}" + (
        f"; {hint}" if hint else ""
    )


def _node_failed(error: MicroError) -> bool:
    """Whether the node itself failed (rather than answering with an error): it refused or
    dropped the connection, said nothing a client could read, or nothing in time."""
    return isinstance(error, ConnectionFailed | ConnectionLost) or (
        isinstance(error, BadGateway | Timeout) and error.id == CLIENT_ID
    )


def _timed_out(error: MicroError) -> bool:
    """Whether the client's own clock ended the attempt."""
    return isinstance(error, Timeout) and error.id == CLIENT_ID


def _route(endpoint: str, records: list[ServiceRecord]) -> tuple[str, str, bool]:
    """The HTTP method, path and idempotency of ``endpoint``: from the registry, else by
    convention (``Greeter.GetItem`` is a non-idempotent ``POST /greeter/get_item``)."""
    for record in records:
        for candidate in record.endpoints:
            if candidate.name == endpoint and "path" in candidate.metadata:
                metadata = candidate.metadata
                return (
                    metadata.get("method", "POST"),
                    metadata["path"],
                    metadata.get("idempotent") == "true",
                )
    return "POST", default_path(endpoint), False


_END = object()


def _grpc_route(service: str, endpoint: str, records: list[ServiceRecord]) -> tuple[str, str, bool]:
    """The gRPC method path of ``endpoint`` (from the registry, else by convention), its
    stream kind and idempotency."""
    for record in records:
        for candidate in record.endpoints:
            if candidate.name == endpoint and "grpc" in candidate.metadata:
                metadata = candidate.metadata
                return (
                    metadata["grpc"],
                    metadata.get("stream", ""),
                    metadata.get("idempotent") == "true",
                )
    from .grpc import method_path

    return method_path(service, endpoint), "", False


def _grpc_address(node: Node, address: str | None) -> str:
    # With ``address`` the caller named the gRPC address itself; else nodes were selected
    # with ``_serves_grpc``.
    return address or node.metadata["grpc"]


def _serves_grpc(node: Node) -> bool:
    return bool(node.metadata.get("grpc"))


def _stream_kind(endpoint: str, records: list[ServiceRecord], request: Any) -> str:
    """``server``, ``client`` or ``bidi``: from the registry, else from the request (a stream of
    requests goes as ``bidi``, which carries a client stream's single reply as well)."""
    for record in records:
        for candidate in record.endpoints:
            if candidate.name == endpoint:
                kind = candidate.metadata.get("stream")
                if kind:
                    return kind
                raise ValueError(f"{endpoint} does not stream: use call()")
    streams_requests = isinstance(request, AsyncIterable | Iterable) and not isinstance(
        request, Mapping | str | bytes | BaseModel
    )
    return "bidi" if streams_requests else "server"


def _stream_line(line: bytes, reply_type: MessageType | None, service: str) -> Any:
    if line.startswith(b'{"error":'):
        data = orjson.loads(line)
        if set(data) == {"error"}:
            raise MicroError.from_dict(data["error"], id=service)
    try:
        return JSON.decode(line, reply_type)
    except BadRequest as exc:
        raise BadGateway(
            f"{service} sent a reply that does not decode: {exc.detail}", id=CLIENT_ID
        ) from None


async def _then(first: Any, replies: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """``first`` (unless the stream ended before it), then the rest of ``replies``."""
    try:
        if first is _END:
            return
        yield first
        async for reply in replies:
            yield reply
    finally:
        await _close(replies)


@dataclass(frozen=True, slots=True)
class _Options:
    """How one call picks its nodes and retries: ``None`` for the client's own."""

    retries: int | None
    version: str | None
    labels: Mapping[str, str] | None
    strategy: Strategy | None


async def _one(reply: Awaitable[Any]) -> AsyncIterator[Any]:
    yield await reply


async def _close(replies: AsyncIterator[Any]) -> None:
    close = getattr(replies, "aclose", None)
    if close is not None:
        await close()
