"""The OpenAPI document as served: what a service really answers, not what FastAPI would.

FastAPI documents a ``422`` ``HTTPValidationError`` for invalid input, JSON in and out, and
JSON lines for a stream. A service answers otherwise: every error in Go Micro's shape
(``MicroError`` in ``components``), invalid input as a ``400``, RPC bodies in every codec of
``asgi_micro.codec.CODECS``, streams as NDJSON or Server-Sent Events. ``Service.attach`` calls
``use_served_openapi(app)``, so ``/openapi.json`` and ``app.openapi()`` describe the service
once it serves the app.

Each operation gets the errors the framework itself sends there (handlers add their own with
``responses={404: {"description": ...}}``; an error response without content gets the error
shape). Requests pay nothing for it: the document is rewritten once, when first asked for.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import ValidationError

from .codec import CODECS, Codec, ProtobufCodec
from .errors import (
    BadRequest,
    InternalServerError,
    MicroError,
    NotAcceptable,
    PayloadTooLarge,
    Timeout,
    UnsupportedMediaType,
)
from .messages import MessageType
from .protobuf.codec import message_converter
from .protobuf.spec import ProtoSchemaError
from .router import MicroRoute
from .rpc import RPC
from .streaming import NDJSON, SSE

__all__ = ["ERROR_SCHEMA", "ERROR_SCHEMA_NAME", "served_openapi", "use_served_openapi"]

ERROR_SCHEMA_NAME = "MicroError"
ERROR_SCHEMA: dict[str, Any] = {
    "title": ERROR_SCHEMA_NAME,
    "description": "Every error, in Go Micro's shape.",
    "type": "object",
    "properties": {
        "id": {
            "type": "string",
            "title": "Id",
            "description": "Who raised it: a service name, or asgi_micro.client.",
        },
        "code": {"type": "integer", "title": "Code", "description": "The HTTP status code."},
        "detail": {"type": "string", "title": "Detail", "description": "For people."},
        "status": {"type": "string", "title": "Status", "description": "The reason phrase."},
    },
    "required": ["id", "code", "detail", "status"],
}
"""The JSON schema of ``MicroError.to_dict()``."""

_INSTALLED = "__micro_served_openapi__"
_FASTAPI_VALIDATION = "#/components/schemas/HTTPValidationError"


def _error_ref() -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{ERROR_SCHEMA_NAME}"}


def _errors(*described: tuple[type[MicroError], str]) -> dict[str, str]:
    """OpenAPI responses by status: the error's reason phrase, and why it is sent."""
    return {str(error.code): f"{error().status}: {why}" for error, why in described}


# MicroMiddleware answers these on every route: a malformed Micro-Timeout or invalid input
# (FastAPI's 422, rewritten), the deadline, an unhandled exception.
_EVERY_ROUTE = _errors(
    (
        BadRequest,
        "the request is invalid (the detail names the fields), or its Micro-Timeout is not a "
        "number of milliseconds",
    ),
    (Timeout, "the deadline (Micro-Timeout) passed"),
    (InternalServerError, "the handler failed; details stay in the server log"),
)
_TOO_LARGE = _errors((PayloadTooLarge, "the request body is over the limit"))
# What an RPC endpoint served by asgi-micro (not by FastAPI) answers besides.
_RPC = {
    **_errors(
        (NotAcceptable, "no reply codec for the Accept header"),
        (UnsupportedMediaType, "no codec for the Content-Type"),
    ),
    **_TOO_LARGE,
}
_STREAM = {
    **_RPC,
    **_errors(
        (
            NotAcceptable,
            f"the Accept header allows neither {NDJSON.content_type.decode()} nor "
            f"{SSE.content_type.decode()}",
        )
    ),
}


def use_served_openapi(app: Any) -> None:
    """Make ``app.openapi()`` (so ``/openapi.json`` too) return ``served_openapi``, built on
    first use from what ``app.openapi`` returned until now; idempotent. Apps other than FastAPI
    have no document and are left alone."""
    if not isinstance(app, FastAPI) or getattr(app.openapi, _INSTALLED, False):
        return
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = served_openapi(app, generate())
        return app.openapi_schema

    setattr(openapi, _INSTALLED, True)
    app.openapi_schema = None  # one FastAPI built before would not say what is served
    app.openapi = openapi  # type: ignore[method-assign]


def served_openapi(app: FastAPI, document: dict[str, Any]) -> dict[str, Any]:
    """``document`` (FastAPI's document of ``app``) rewritten, in place, to describe what a
    service serving ``app`` answers."""
    paths = document.get("paths", {})
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if not isinstance(route, APIRoute):
            continue
        rpc = route.rpc if isinstance(route, MicroRoute) else None
        # Served by asgi-micro itself, or by FastAPI (see MicroRoute.fast_allowed).
        fast = isinstance(route, MicroRoute) and route.fast and not context.dependencies
        for method in context.methods or ():
            operation = paths.get(context.path_format, {}).get(method.lower())
            if operation is None:
                continue
            if rpc is not None and fast:
                _describe_rpc(operation, rpc)
            elif "requestBody" in operation:
                _add_errors(operation, _TOO_LARGE)  # over the service's max_message_size
            _add_errors(operation, _EVERY_ROUTE)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault(ERROR_SCHEMA_NAME, copy.deepcopy(ERROR_SCHEMA))
    for unused in ("HTTPValidationError", "ValidationError"):  # the first refers to the second
        if unused in schemas and f'"#/components/schemas/{unused}"' not in _text(document):
            del schemas[unused]
    return document


def _describe_rpc(operation: dict[str, Any], rpc: RPC) -> None:
    body = operation.get("requestBody")
    if body is not None and rpc.request is not None:
        schema = body.get("content", {}).get("application/json", {}).get("schema", {})
        body["content"] = {media: {"schema": dict(schema)} for media in _media_types(rpc.request)}
        # An empty body is the empty message, as the codecs read it.
        body["required"] = not _takes_empty(rpc.request)
    ok = operation.get("responses", {}).get("200")
    if ok is not None:
        content = ok.setdefault("content", {})
        if rpc.server_streaming:
            item = content.get("application/jsonl", {}).get("itemSchema", {})
            ok["content"] = _stream_content(item)
            ok["description"] = (
                f"The replies as they come: {NDJSON.content_type.decode()}, one JSON reply a "
                "line (a failure after the first ends the stream with a line "
                f'{{"error": ...}}), or {SSE.content_type.decode()}, one event a reply (a '
                "failure: an error event), as Accept prefers."
            )
        else:
            schema = content.get("application/json", {}).get("schema", {})
            ok["content"] = {
                media: {"schema": dict(schema)} for media in _media_types(rpc.response)
            }
    _add_errors(operation, _STREAM if rpc.server_streaming else _RPC)


def _stream_content(item: dict[str, Any]) -> dict[str, Any]:
    error_line = {
        "type": "object",
        "properties": {"error": _error_ref()},
        "required": ["error"],
    }

    def event(name: str, data: dict[str, Any], *, required: list[str]) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {
                "event": {"const": name},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": data,
                },
            },
            "required": required,
        }

    return {
        NDJSON.content_type.decode(): {"itemSchema": {"anyOf": [dict(item), error_line]}},
        SSE.content_type.decode(): {
            # An event without an event field is a "message".
            "itemSchema": {
                "oneOf": [
                    event("message", item, required=["data"]),
                    event("error", _error_ref(), required=["event", "data"]),
                ]
            }
        },
    }


def _add_errors(operation: dict[str, Any], errors: dict[str, str]) -> None:
    responses = operation.setdefault("responses", {})
    validation = responses.get("422")
    if validation is not None and _FASTAPI_VALIDATION in _text(validation):
        del responses["422"]  # FastAPI's; MicroMiddleware answers 400 instead
    for status, description in errors.items():
        responses.setdefault(status, {"description": description})
    for status, response in responses.items():
        if status[:1] in ("4", "5") or status == "default":
            response.setdefault("content", {"application/json": {"schema": _error_ref()}})
    operation["responses"] = dict(sorted(responses.items()))


def _media_types(message_type: MessageType | None) -> Iterator[str]:
    """The media types of the codecs that carry ``message_type`` (``None``: the empty
    message), each codec once."""
    seen: list[Codec] = []
    for codec in CODECS.values():
        if codec in seen:
            continue
        seen.append(codec)
        if isinstance(codec, ProtobufCodec) and message_type is not None:
            try:
                message_converter(message_type)
            except ProtoSchemaError:
                continue  # answered 415 or 406
        yield codec.content_type


def _takes_empty(message_type: MessageType) -> bool:
    try:
        message_type.validate_json(b"{}")
    except (ValidationError, ValueError, TypeError):
        return False
    return True


def _text(value: Any) -> str:
    return orjson.dumps(value).decode()
