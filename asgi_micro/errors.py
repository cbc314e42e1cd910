"""Every error asgi-micro raises or puts on the wire.

On the wire an error is Go Micro's shape, ``{"id", "code", "detail", "status"}``: ``id`` names
who raised it (a service name, or ``asgi_micro.client``), ``code`` is the HTTP status code,
``detail`` is for people and ``status`` is the code's reason phrase. (``CLIENT_ID``,
``STORE_ID``, ``SERVER_ID`` and ``AUTH_ID`` name the client, the store, the HTTP server and
auth.) A handler
raises one of these classes; the server renders it and the client raises the same class again.

    MicroError
    ├── BadRequest             400  invalid input; names the fields that failed
    ├── Unauthorized           401
    ├── Forbidden              403
    ├── NotFound               404  unknown service, endpoint or record
    ├── MethodNotAllowed       405
    ├── NotAcceptable          406  no codec for the Accept header
    ├── Timeout                408  the deadline passed, or the client took too long to send
    ├── Conflict               409  a compare-and-set lost
    ├── PayloadTooLarge        413  a body or message over max_message_size
    ├── UnsupportedMediaType   415  no codec for the Content-Type
    ├── TooManyRequests        429
    ├── RequestHeaderFieldsTooLarge
    │                          431  a header block over max_header_size
    ├── InternalServerError    500  a handler failed; details stay in the server log
    ├── NotImplemented         501
    ├── BadGateway             502
    │   └── ConnectionLost     502  the connection broke after the request was sent
    ├── ServiceUnavailable     503  no node to call, or the node is draining
    │   └── ConnectionFailed   503  a node could not be reached (the request was not sent)
    └── GatewayTimeout         504
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

import orjson

__all__ = [
    "AUTH_ID",
    "CLIENT_ID",
    "SERVER_ID",
    "STORE_ID",
    "BadGateway",
    "BadRequest",
    "Conflict",
    "ConnectionFailed",
    "ConnectionLost",
    "Forbidden",
    "GatewayTimeout",
    "InternalServerError",
    "MethodNotAllowed",
    "MicroError",
    "NotAcceptable",
    "NotFound",
    "NotImplemented",
    "PayloadTooLarge",
    "RequestHeaderFieldsTooLarge",
    "ServiceUnavailable",
    "Timeout",
    "TooManyRequests",
    "Unauthorized",
    "UnsupportedMediaType",
    "error_for_status",
    "validation_detail",
]


CLIENT_ID = "asgi_micro.client"
"""The ``id`` of errors a client raises itself (it could not reach a node, the deadline...)."""
STORE_ID = "asgi_micro.store"
"""The ``id`` of errors a store raises (no such record, a lost compare-and-set, bad input)."""
SERVER_ID = "asgi_micro.server"
"""The ``id`` of errors the HTTP server answers with before any app sees the request."""
AUTH_ID = "asgi_micro.auth"
"""The ``id`` of errors auth raises (no valid token, a rule denies the call, bad credentials)."""


class MicroError(Exception):
    """Base of the hierarchy; ``code`` is the HTTP status it maps to."""

    code: int = 500

    def __init__(self, detail: str = "", *, id: str = "") -> None:
        super().__init__(detail)
        self.detail = detail or self.status
        self.id = id

    @property
    def status(self) -> str:
        try:
            return HTTPStatus(self.code).phrase
        except ValueError:
            return "Error"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "code": self.code, "detail": self.detail, "status": self.status}

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @staticmethod
    def from_dict(data: Any, *, status_code: int = 500, id: str = "") -> MicroError:
        """Rebuild the error a peer sent; a body that is not our shape keeps its HTTP status."""
        if isinstance(data, dict) and isinstance(data.get("code"), int):
            error = error_for_status(data["code"])(
                str(data.get("detail", "")), id=str(data.get("id", id))
            )
            error.code = data["code"]  # keeps codes we have no class for, such as 418
            return error
        detail = data if isinstance(data, str) else orjson.dumps(data).decode()
        return error_for_status(status_code)(detail, id=id)

    @staticmethod
    def from_body(status: int, body: bytes, *, id: str = "") -> MicroError:
        """The error an HTTP answer of ``status`` carries: our shape in JSON, any other JSON,
        or text (an empty body says who answered what)."""
        try:
            data: Any = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = body.decode("utf-8", "replace") or f"{id or 'the server'} answered {status}"
        return MicroError.from_dict(data, status_code=status, id=id)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.detail!r}, id={self.id!r})"

    def __str__(self) -> str:
        prefix = f"{self.id}: " if self.id else ""
        return f"{prefix}{self.code} {self.status}: {self.detail}"


class BadRequest(MicroError):
    code = 400

    @classmethod
    def from_validation(cls, exc: Any, *, id: str = "") -> BadRequest:
        """The error of a ``pydantic.ValidationError``: which fields failed, and why."""
        return cls(validation_detail(exc.errors(include_url=False)), id=id)


class Unauthorized(MicroError):
    code = 401


class Forbidden(MicroError):
    code = 403


class NotFound(MicroError):
    code = 404


class MethodNotAllowed(MicroError):
    code = 405


class NotAcceptable(MicroError):
    code = 406


class Timeout(MicroError):
    code = 408


class Conflict(MicroError):
    code = 409


class PayloadTooLarge(MicroError):
    code = 413


class UnsupportedMediaType(MicroError):
    code = 415


class TooManyRequests(MicroError):
    code = 429


class RequestHeaderFieldsTooLarge(MicroError):
    code = 431


class InternalServerError(MicroError):
    code = 500


class NotImplemented(MicroError):
    code = 501


class BadGateway(MicroError):
    code = 502


class ConnectionLost(BadGateway):
    """The connection broke after the request was written and before the whole response came.

    The node may have processed the request, so only an idempotent one may be sent again.
    ``reused`` tells whether the connection had served an earlier request (a keep-alive connection
    the node closed as the request went out), ``response_started`` whether any byte of the
    response had arrived.
    """

    def __init__(
        self,
        detail: str = "",
        *,
        id: str = "",
        reused: bool = False,
        response_started: bool = False,
    ) -> None:
        super().__init__(detail, id=id)
        self.reused = reused
        self.response_started = response_started


class ServiceUnavailable(MicroError):
    code = 503


class ConnectionFailed(ServiceUnavailable):
    """The node could not be reached; nothing was sent, so any request may be retried."""


class GatewayTimeout(MicroError):
    code = 504


_BY_CODE: dict[int, type[MicroError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        NotAcceptable,
        Timeout,
        Conflict,
        PayloadTooLarge,
        UnsupportedMediaType,
        TooManyRequests,
        RequestHeaderFieldsTooLarge,
        InternalServerError,
        NotImplemented,
        BadGateway,
        ServiceUnavailable,
        GatewayTimeout,
    )
}


def validation_detail(errors: Sequence[Any], *, skip_prefix: int = 0) -> str:
    """``"name: Field required; age: Input should be a valid integer"`` from pydantic's (or
    FastAPI's) list of errors; ``skip_prefix`` leaves out the first parts of each location."""
    parts = []
    for error in errors:
        location = [str(part) for part in error.get("loc", ())][skip_prefix:]
        parts.append(f"{'.'.join(location) or 'body'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def error_for_status(code: int) -> type[MicroError]:
    """The class for an HTTP status: exact match, else the 4xx or 5xx family default."""
    if code in _BY_CODE:
        return _BY_CODE[code]
    return BadRequest if 400 <= code < 500 else InternalServerError
