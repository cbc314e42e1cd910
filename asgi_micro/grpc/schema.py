"""Which of an app's handlers gRPC serves, and the one protobuf package describing them.

Every ``@router.rpc()`` handler is a gRPC method: ``Greeter.Hello`` is ``Hello`` of the gRPC
service ``Greeter`` in the service's package, ``/<package>.Greeter/Hello``. A handler is left
to HTTP (with a reason, logged at start-up) when FastAPI must run something for it that gRPC
cannot: parameters only FastAPI resolves (``Request``, a plain ``Depends``, ``Header()``...),
dependencies declared on its route or router, or messages protobuf cannot carry.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from fastapi.routing import iter_route_contexts

from ..messages import MessageType
from ..protobuf import ProtoMethod, ProtoSchema, ProtoSchemaError, proto_package
from ..router import rpc_of
from ..rpc import RPC

__all__ = ["GrpcMethod", "GrpcSchema", "app_rpcs", "grpc_schema", "service_package"]


@dataclass(frozen=True, slots=True)
class GrpcMethod:
    """One handler as a gRPC method: ``path`` is ``/<package>.<service>/<method>``."""

    rpc: RPC
    service: str
    path: str


@dataclass(slots=True)
class GrpcSchema:
    """The gRPC side of an app: the protobuf package, the methods by endpoint name, and the
    endpoints left to HTTP with the reason."""

    proto: ProtoSchema
    methods: dict[str, GrpcMethod] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def paths(self) -> dict[str, str]:
        """gRPC method paths by endpoint name."""
        return {name: method.path for name, method in self.methods.items()}


def service_package(name: str, package: str | None = None) -> str:
    """The protobuf package of the service ``name``: ``package`` when configured, else
    derived from the name (``my-service`` -> ``my_service``)."""
    return package or proto_package(name)


def app_rpcs(app: Any) -> dict[str, tuple[RPC, bool]]:
    """The RPC endpoints of an app by name, each with whether FastAPI dependencies guard it
    (on its route, its router or an ``include_router``)."""
    found: dict[str, tuple[RPC, bool]] = {}
    for context in iter_route_contexts(getattr(app, "routes", None) or ()):
        rpc = rpc_of(context.original_route)
        if rpc is None:
            continue
        guarded = bool(getattr(context, "dependencies", None))
        previous = found.get(rpc.name)
        if previous is not None:
            if previous[0] is not rpc:
                raise ProtoSchemaError(
                    f"two handlers are named {rpc.name}: {_where(previous[0])} and {_where(rpc)}"
                )
            guarded = guarded or previous[1]  # included twice: the guarded inclusion wins
        found[rpc.name] = (rpc, guarded)
    return found


def grpc_schema(app: Any, *, package: str) -> GrpcSchema:
    """The methods of ``app`` in protobuf package ``package``, built once, so that gRPC and HTTP
    ``application/protobuf`` share its converters."""
    schema = GrpcSchema(ProtoSchema(package=package))
    by_service: dict[str, list[RPC]] = {}
    for name, (rpc, guarded) in app_rpcs(app).items():
        reason = _reason_to_skip(rpc, guarded, package)
        if reason:
            schema.skipped[name] = reason
            continue
        by_service.setdefault(rpc.router, []).append(rpc)
        path = schema.proto.method_path(rpc.router, rpc.method)
        schema.methods[name] = GrpcMethod(rpc, rpc.router, path)
    for service, rpcs in by_service.items():
        # The MessageTypes themselves, which the built schema gives their converters.
        schema.proto.add_service(service, [_method(rpc, rpc.request, rpc.response) for rpc in rpcs])
    schema.proto.build()
    return schema


def _reason_to_skip(rpc: RPC, guarded: bool, package: str) -> str:
    if not rpc.standalone:
        return "its parameters need FastAPI (Request, a plain Depends, Header()...)"
    if guarded:
        return "FastAPI dependencies guard its route or router"
    try:
        # On its own first, so that a model protobuf cannot carry leaves the others served.
        ProtoSchema(package=package).add_service(
            rpc.router, [_method(rpc, _type(rpc.request), _type(rpc.response))]
        )
    except ProtoSchemaError as exc:
        return str(exc)
    return ""


def _method(rpc: RPC, request: Any, response: Any) -> ProtoMethod:
    return ProtoMethod(
        rpc.method,
        request,
        response,
        client_streaming=rpc.client_streaming,
        server_streaming=rpc.server_streaming,
        description=inspect.getdoc(rpc.handler) or "",
    )


def _type(message_type: MessageType | None) -> Any:
    return None if message_type is None else message_type.type


def _where(rpc: RPC) -> str:
    handler = rpc.handler
    return f"{getattr(handler, '__module__', '?')}.{getattr(handler, '__qualname__', handler)}"
