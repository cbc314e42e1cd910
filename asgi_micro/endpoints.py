"""The registry's view of an app: one ``Endpoint`` per route and HTTP method."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute

from .naming import IDEMPOTENT_METHODS
from .registry import Endpoint
from .router import ENDPOINT_EXTENSION, rpc_of
from .rpc import RPC

__all__ = ["INTERNAL_PREFIX", "endpoints_of", "route_endpoint"]

logger = logging.getLogger(__name__)

INTERNAL_PREFIX = "/_micro"


def route_endpoint(
    method: str, path: str, *, named: str | None = None, methods: Iterable[str] = ()
) -> str:
    """The endpoint name of a plain route at ``path`` for a request with ``method``, as the
    registry lists it: ``named`` (what a ``MicroRouter`` calls it), else ``"<METHOD> <path>"``
    where ``HEAD`` of a ``GET`` route is that ``GET``, and a WebSocket route is
    ``WEBSOCKET <path>``."""
    if named:
        return named
    if method == "HEAD" and "GET" in methods:
        method = "GET"
    return f"{method} {path}"


def endpoints_of(app: Any, *, grpc: Mapping[str, str] | None = None) -> list[Endpoint]:
    """Every route of a FastAPI or Starlette app, RPC endpoints with their message schemas;
    ``grpc`` maps the endpoints served over gRPC to their method paths."""
    if isinstance(app, FastAPI):
        return _fastapi_endpoints(app, grpc or {})
    routes = getattr(app, "routes", None)
    return _starlette_endpoints(routes, "") if routes else []


def _rpc_endpoint(rpc: RPC, path: str, *, grpc: str | None = None) -> Endpoint:
    """An RPC endpoint: over HTTP a ``POST`` (a ``WEBSOCKET`` when it takes a stream of
    requests), and over gRPC the method path ``grpc`` when it is served there; its
    ``description`` is the handler's docstring."""
    metadata = {
        "kind": "rpc",
        "method": "WEBSOCKET" if rpc.client_streaming else "POST",
        "path": path,
        "idempotent": "true" if rpc.idempotent else "false",
    }
    if rpc.kind != "unary":
        metadata["stream"] = rpc.kind
    if grpc:
        metadata["grpc"] = grpc
    description = inspect.getdoc(rpc.handler)
    if description:  # what the MCP gateway tells an agent the tool does
        metadata["description"] = description
    return Endpoint(
        name=rpc.name,
        request=rpc.request.json_schema() if rpc.request else None,
        response=rpc.response.json_schema() if rpc.response else None,
        metadata=metadata,
    )


def _fastapi_endpoints(app: FastAPI, grpc: Mapping[str, str]) -> list[Endpoint]:
    try:
        openapi = app.openapi()
    except Exception:  # a broken schema must not keep the service from registering
        logger.warning("cannot build the OpenAPI schema; endpoints are registered without schemas")
        openapi = {}
    paths = openapi.get("paths", {})
    components = openapi.get("components", {}).get("schemas", {})
    endpoints: list[Endpoint] = []
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        path = context.path_format or context.path or ""
        rpc = rpc_of(route)
        if rpc is not None:
            endpoints.append(_rpc_endpoint(rpc, path, grpc=grpc.get(rpc.name)))
            continue
        if not isinstance(route, APIRoute):
            endpoints.extend(_starlette_endpoints([route], ""))
            continue
        if path.startswith(INTERNAL_PREFIX):
            continue
        for method in sorted(context.methods or ()):
            operation = paths.get(path, {}).get(method.lower(), {})
            name = route_endpoint(method, path, named=operation.get(ENDPOINT_EXTENSION))
            endpoints.append(
                Endpoint(
                    name=name,
                    request=_request_schema(operation, components),
                    response=_response_schema(operation, components),
                    metadata=_http_metadata(method, path, operation.get("parameters", ())),
                )
            )
    return endpoints


def _starlette_endpoints(routes: Iterable[BaseRoute], prefix: str) -> list[Endpoint]:
    endpoints: list[Endpoint] = []
    for route in routes:
        if isinstance(route, Mount):
            endpoints.extend(_starlette_endpoints(route.routes, prefix + route.path))
        elif isinstance(route, Route):
            path = prefix + route.path_format
            if not route.include_in_schema or path.startswith(INTERNAL_PREFIX):
                continue
            for method in sorted(route.methods or ()):
                if method == "HEAD" and "GET" in (route.methods or ()):
                    continue
                endpoints.append(
                    Endpoint(
                        name=route_endpoint(method, path), metadata=_http_metadata(method, path)
                    )
                )
        elif isinstance(route, WebSocketRoute):
            path = prefix + route.path_format
            endpoints.append(
                Endpoint(
                    name=route_endpoint("WEBSOCKET", path),
                    metadata={"kind": "websocket", "path": path},
                )
            )
    return endpoints


def _http_metadata(
    method: str, path: str, parameters: Sequence[dict[str, Any]] = ()
) -> dict[str, str]:
    metadata = {
        "kind": "http",
        "method": method,
        "path": path,
        "idempotent": "true" if method in IDEMPOTENT_METHODS else "false",
    }
    if parameters:
        metadata["parameters"] = ",".join(f"{p.get('in')}:{p.get('name')}" for p in parameters)
    return metadata


def _request_schema(operation: dict[str, Any], components: dict[str, Any]) -> dict[str, Any] | None:
    content = operation.get("requestBody", {}).get("content", {})
    for media in content.values():
        if "schema" in media:
            return _standalone(media["schema"], components)
    return None


def _response_schema(
    operation: dict[str, Any], components: dict[str, Any]
) -> dict[str, Any] | None:
    for status, response in sorted(operation.get("responses", {}).items()):
        if not str(status).startswith("2"):
            continue
        for media in response.get("content", {}).values():
            schema = media.get("schema")
            if schema:
                return _standalone(schema, components)
    return None


def _standalone(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``#/components/schemas/`` references moved into ``$defs``."""
    needed: dict[str, Any] = {}
    pending = [schema]
    while pending:
        node = pending.pop()
        for ref in _refs(node):
            name = ref.rpartition("/")[2]
            if name not in needed and name in components:
                needed[name] = components[name]
                pending.append(components[name])
    result: dict[str, Any] = _rewrite(schema)
    if needed:
        result["$defs"] = {name: _rewrite(value) for name, value in needed.items()}
    return result


def _refs(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _rewrite(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: value.replace("#/components/schemas/", "#/$defs/")
            if key == "$ref" and isinstance(value, str)
            else _rewrite(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_rewrite(item) for item in node]
    return node
