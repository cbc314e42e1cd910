"""The gRPC server of a service: grpc.aio in the event loop that serves the app.

It serves every method of the service's ``GrpcSchema``, the standard health service
(``grpc.health.v1``: ``SERVING``, ``NOT_SERVING`` from the moment the service starts to drain)
and server reflection (v1alpha, from the schema's descriptor pool). ``stop(grace)`` stops taking
calls and waits up to ``grace`` seconds for the running ones before cancelling them. A request
message over ``max_message_size`` (the service's one limit, ``asgi_micro.limits``) is refused
by grpc itself with ``RESOURCE_EXHAUSTED``, before it is decoded.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from ..limits import DEFAULT_MAX_MESSAGE_SIZE
from ..protobuf import ProtoSchemaError
from .handlers import method_handler
from .schema import GrpcSchema, grpc_schema

if TYPE_CHECKING:
    from ..pipeline import Host

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "GrpcServer"]

logger = logging.getLogger(__name__)


class GrpcServer:
    """Serves the gRPC methods of ``host``'s app: a part of the service, built before the app
    is known. ``prepare(app)`` builds the protobuf package of its handlers (before the first
    request: HTTP ``application/protobuf`` uses the same converters); the server binds at
    ``start`` when given an ``address``, else on the HTTP host once that is known
    (``serve_on``), on a free port."""

    metadata_key = "grpc"

    def __init__(
        self,
        host: Host,
        *,
        address: str | None = None,
        package: str,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.host = host
        self.configured_address = address
        self.address: str | None = None
        self.package = package
        self.max_message_size = max_message_size
        self.options = tuple(options)
        self.schema: GrpcSchema | None = None
        self._server: Any = None
        self._health: Any = None

    def __repr__(self) -> str:
        return f"GrpcServer({self.address or self.configured_address!r}, package={self.package!r})"

    @property
    def port(self) -> int | None:
        return None if self.address is None else int(self.address.rpartition(":")[2])

    def prepare(self, app: Any) -> GrpcSchema:
        """The methods of ``app``, as protobuf descriptors and converters."""
        try:
            self.schema = grpc_schema(app, package=self.package)
        except ProtoSchemaError as exc:
            raise ProtoSchemaError(
                f"{self.host.name}: {exc}; or serve HTTP only: Service(grpc=False) or "
                "MICRO_GRPC=false"
            ) from exc
        return self.schema

    async def start(self) -> None:
        """Bind now when an address was configured; else ``serve_on`` binds later."""
        if self.configured_address is not None:
            await self._bind(self.configured_address)

    async def serve_on(self, http_host: str) -> str | None:
        """Serve on ``http_host`` (a free port), unless serving already: the address."""
        if self._server is None:
            if ":" in http_host:
                http_host = f"[{http_host}]"  # an IPv6 address, as grpc reads host:port
            await self._bind(f"{http_host}:0")
        return self.address

    async def _bind(self, address: str) -> None:
        if self.schema is None:
            raise RuntimeError("prepare(app) before serving gRPC")
        options = [
            ("grpc.max_receive_message_length", self.max_message_size),
            # Room for a bearer token of auth's MAX_TOKEN_SIZE (8 KiB) beside the rest of the
            # metadata: above gRPC's default soft limit, 8 KiB, it refuses a random share of calls.
            ("grpc.max_metadata_size", 16 * 1024),
            # Fail on a port in use instead of sharing it with another process.
            ("grpc.so_reuseport", 0),
            *self.options,
        ]
        server = grpc.aio.server(options=options)
        proto = self.schema.proto
        by_service: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
        for method in self.schema.methods.values():
            rpc = method.rpc
            by_service.setdefault(method.service, {})[rpc.method] = method_handler(
                rpc, self.host, proto.converter(rpc.request), proto.converter(rpc.response)
            )
        handlers = _GenericHandlers()
        for name, methods in by_service.items():
            handlers.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(f"{proto.package}.{name}", methods),)
            )
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, handlers)
        # Reflection answers from the schema's pool: put the standard services' files in too.
        pool = proto.pool
        for file in (health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR):
            with contextlib.suppress(TypeError):  # in the pool already: served before
                pool.AddSerializedFile(file.serialized_pb)
        names = [*proto.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer(names, pool=pool), handlers
        )
        server.add_generic_rpc_handlers(handlers.handlers)
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"{self.host.name}: cannot serve gRPC on {address}: {exc}") from exc
        await server.start()
        self._server = server
        self.address = f"{address.rpartition(':')[0]}:{port}"
        await self.set_serving(True)
        for name, reason in self.schema.skipped.items():
            logger.warning("%s: %s is served over HTTP only: %s", self.host.name, name, reason)

    async def set_serving(self, serving: bool) -> None:
        """What the health service reports, for the server and each of its services."""
        if self._health is None or self.schema is None:
            return
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.schema.proto.service_names):
            await self._health.set(name, status)

    async def drain(self) -> None:
        """Report ``NOT_SERVING``: health-checking clients stop sending calls here."""
        await self.set_serving(False)

    async def stop(self, grace: float | None = 0.0) -> None:
        """Stop taking calls, give the running ones ``grace`` seconds, then cancel them;
        idempotent. (The service waits for calls in flight before it stops its parts.)"""
        server, self._server = self._server, None
        if server is None:
            return
        await self.set_serving(False)
        await server.stop(grace)
        self._health = None
        self.address = None


class _GenericHandlers:
    """Takes what generated ``add_*Servicer_to_server`` functions add, as generic handlers
    only. grpc.aio's server keeps one pending request per *registered* method and waits on
    all of them for every call it takes, so each registered method costs every call an
    ``asyncio.wait`` entry (measured under callgrind: with health and reflection registered,
    ~43,000 instructions per call more than with generic handlers alone, 12% of a call); a
    generic handler costs a dict lookup when a call's method is resolved."""

    def __init__(self) -> None:
        self.handlers: list[grpc.GenericRpcHandler] = []

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self.handlers.extend(handlers)

    def add_registered_method_handlers(
        self, name: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        """Nothing to do: generated code adds the same handlers as a generic handler too."""
