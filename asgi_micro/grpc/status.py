"""The error hierarchy on gRPC: status codes both ways, and the error itself in trailing metadata.

A handler's ``MicroError`` ends the call with the status code its HTTP code maps to (the mapping
of ``google.rpc.Code``, with 408 as ``DEADLINE_EXCEEDED``) and Go Micro's JSON error in the
trailing metadata key ``micro-error-bin``, so an asgi-micro client raises the same class with
the same id and detail. Other gRPC clients read the status code and the details text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import orjson

from ..errors import (
    BadGateway,
    BadRequest,
    Conflict,
    Forbidden,
    InternalServerError,
    MicroError,
    NotFound,
    NotImplemented,
    ServiceUnavailable,
    Timeout,
    TooManyRequests,
    Unauthorized,
)

__all__ = ["ERROR_KEY", "error_from_status", "error_metadata", "status_for"]

ERROR_KEY = "micro-error-bin"
"""Trailing metadata holding the error as Go Micro's JSON (binary, so any detail fits)."""

_BY_HTTP: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    406: grpc.StatusCode.INVALID_ARGUMENT,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.ABORTED,
    412: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    416: grpc.StatusCode.OUT_OF_RANGE,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

# A status without asgi-micro's error (another server, or grpc itself): the closest class.
_BY_STATUS: dict[grpc.StatusCode, type[MicroError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: BadRequest,
    grpc.StatusCode.FAILED_PRECONDITION: BadRequest,
    grpc.StatusCode.OUT_OF_RANGE: BadRequest,
    grpc.StatusCode.UNAUTHENTICATED: Unauthorized,
    grpc.StatusCode.PERMISSION_DENIED: Forbidden,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: Conflict,
    grpc.StatusCode.ABORTED: Conflict,
    grpc.StatusCode.RESOURCE_EXHAUSTED: TooManyRequests,
    grpc.StatusCode.DEADLINE_EXCEEDED: Timeout,
    grpc.StatusCode.UNIMPLEMENTED: NotImplemented,
    grpc.StatusCode.UNAVAILABLE: ServiceUnavailable,
    grpc.StatusCode.CANCELLED: BadGateway,
    grpc.StatusCode.INTERNAL: InternalServerError,
    grpc.StatusCode.UNKNOWN: InternalServerError,
    grpc.StatusCode.DATA_LOSS: InternalServerError,
}


def status_for(error: MicroError) -> grpc.StatusCode:
    """The gRPC status code of an error: by its HTTP code, else by its family (4xx, 5xx)."""
    code = _BY_HTTP.get(error.code)
    if code is not None:
        return code
    return (
        grpc.StatusCode.FAILED_PRECONDITION if 400 <= error.code < 500 else grpc.StatusCode.INTERNAL
    )


def error_metadata(error: MicroError) -> tuple[tuple[str, bytes]]:
    """Trailing metadata carrying ``error`` whole."""
    return ((ERROR_KEY, error.to_json()),)


def error_from_status(
    code: grpc.StatusCode,
    details: str | None,
    trailing_metadata: Sequence[Any] | None,
    *,
    id: str = "",
) -> MicroError:
    """The error a call ended with: the server's own when it sent one, else the class closest to
    the status code, with the details as detail."""
    for key, value in trailing_metadata or ():
        if key == ERROR_KEY:
            try:
                return MicroError.from_dict(orjson.loads(value), id=id)
            except orjson.JSONDecodeError:
                break  # not ours after all: fall back on the status code
    return _BY_STATUS.get(code, InternalServerError)(details or code.name, id=id)
