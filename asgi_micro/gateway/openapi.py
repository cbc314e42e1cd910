"""The API gateway's combined OpenAPI document: every service's paths under its name, from
the service's own document where it serves one and from the registry's schemas otherwise, with
their schemas renamed apart and one shared error shape."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Final

from ..__about__ import __version__
from ..openapi import ERROR_SCHEMA, ERROR_SCHEMA_NAME
from ..registry import Endpoint

__all__ = ["combined"]

_NDJSON: Final = b"application/x-ndjson"


def combined(
    services: Mapping[str, tuple[Mapping[str, Endpoint], dict[str, Any]]],
) -> dict[str, Any]:
    """One document of ``services``: each one's endpoints, and its own document (``{}`` when
    it has none) to describe them where it does."""
    paths: dict[str, Any] = {"/rpc": _RPC_OPERATION}
    schemas: dict[str, Any] = {ERROR_SCHEMA_NAME: copy.deepcopy(ERROR_SCHEMA)}
    tags = []
    for service, (endpoints, own) in services.items():
        tags.append({"name": service})
        own_paths = own.get("paths", {})
        renamed = {
            name: f"{service}.{name}"
            for name in own.get("components", {}).get("schemas", {})
            if name != ERROR_SCHEMA_NAME
        }
        for name, schema in own.get("components", {}).get("schemas", {}).items():
            if name in renamed:
                schemas[renamed[name]] = _renamed(schema, renamed)
        for endpoint in sorted(endpoints.values(), key=lambda e: e.name):
            if "path" not in endpoint.metadata or endpoint.metadata.get("method") == "WEBSOCKET":
                continue
            path, method = endpoint.metadata["path"], endpoint.metadata.get("method", "POST")
            operation = own_paths.get(path, {}).get(method.lower())
            if operation is None:
                operation = _from_registry(service, endpoint, schemas)
            else:
                operation = _renamed(copy.deepcopy(operation), renamed)
            operation["tags"] = [service]
            if "operationId" in operation:
                operation["operationId"] = f"{service}.{operation['operationId']}"
            paths.setdefault(f"/{service}{path}", {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "asgi-micro API gateway", "version": __version__},
        "tags": tags,
        "paths": paths,
        "components": {"schemas": schemas},
    }


def _from_registry(service: str, endpoint: Endpoint, schemas: dict[str, Any]) -> dict[str, Any]:
    """An operation from what the registry says of the endpoint (its message schemas, with
    their ``$defs`` moved into ``components`` under the service's name)."""
    metadata = endpoint.metadata
    operation: dict[str, Any] = {"summary": endpoint.name}
    if metadata.get("description"):
        operation["description"] = metadata["description"]
    if endpoint.request is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": _hoisted(service, endpoint.request, schemas)}
            },
        }
    ok: dict[str, Any] = {"description": "OK"}
    if endpoint.response is not None:
        schema = _hoisted(service, endpoint.response, schemas)
        if metadata.get("stream") == "server":
            ok["content"] = {_NDJSON.decode(): {"itemSchema": schema}}
        else:
            ok["content"] = {"application/json": {"schema": schema}}
    error = {"content": {"application/json": {"schema": _error_ref()}}}
    operation["responses"] = {"200": ok, "default": {"description": "An error", **error}}
    return operation


def _hoisted(service: str, schema: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    definitions = schema.get("$defs", {})
    renamed = {name: f"{service}.{name}" for name in definitions}
    for name, definition in definitions.items():
        schemas[renamed[name]] = _renamed(definition, renamed, prefix="#/$defs/")
    result: dict[str, Any] = _renamed(
        {key: value for key, value in schema.items() if key != "$defs"}, renamed, prefix="#/$defs/"
    )
    return result


def _renamed(
    node: Any, renamed: Mapping[str, str], *, prefix: str = "#/components/schemas/"
) -> Any:
    """``node`` with its references to ``prefix<name>`` pointing at the renamed components."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith(prefix):
                name = value[len(prefix) :]
                value = f"#/components/schemas/{renamed.get(name, name)}"
            else:
                value = _renamed(value, renamed, prefix=prefix)
            out[key] = value
        return out
    if isinstance(node, list):
        return [_renamed(item, renamed, prefix=prefix) for item in node]
    return node


def _error_ref() -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{ERROR_SCHEMA_NAME}"}


_RPC_OPERATION: Final[dict[str, Any]] = {
    "post": {
        "tags": ["gateway"],
        "summary": "Call an RPC endpoint by name (Go Micro's /rpc)",
        "operationId": "gateway.rpc",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "service": {"type": "string", "examples": ["greeter"]},
                            "endpoint": {"type": "string", "examples": ["Greeter.Hello"]},
                            "request": {"description": "The request: an object, or JSON text."},
                        },
                        "required": ["service", "endpoint"],
                    }
                }
            },
        },
        "responses": {
            "200": {"description": "The endpoint's reply, as the service sent it."},
            "default": {
                "description": "An error, the gateway's or the service's",
                "content": {"application/json": {"schema": _error_ref()}},
            },
        },
    }
}
