"""gRPC for asgi-micro: every RPC handler is also a gRPC method, served by grpc.aio in the event
loop that runs the app.

``Greeter.Hello`` of service ``greeter`` is ``/greeter.Greeter/Hello``: one protobuf package
per service (``Service(grpc_package=...)`` to choose it), one gRPC service per ``MicroRouter``.
The messages come from the handlers' pydantic models (``asgi_micro.protobuf``); health
(``grpc.health.v1``) and server reflection are on. ``asgi-micro proto APP`` prints the
``.proto`` file for other languages.
"""

from .schema import GrpcMethod, GrpcSchema, app_rpcs, grpc_schema, service_package
from .server import DEFAULT_MAX_MESSAGE_SIZE, GrpcServer
from .status import ERROR_KEY, error_from_status, error_metadata, status_for

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "ERROR_KEY",
    "GrpcMethod",
    "GrpcSchema",
    "GrpcServer",
    "app_rpcs",
    "error_from_status",
    "error_metadata",
    "grpc_schema",
    "service_package",
    "status_for",
]
