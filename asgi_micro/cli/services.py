"""``asgi-micro services|describe|call|health``: the registry and the nodes in it, from a shell.

``describe`` says of each node whether its registration verifies under the local key ring (as a
service with auth on checks it before calling the node); ``call --token`` sends a bearer token,
and by name only to nodes whose registration verifies, so that the token goes to no impostor."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import sys
from collections.abc import Callable
from typing import Annotated, Any, Final, Literal, TypeVar

import orjson
import typer
from rich.table import Column, Table
from rich.text import Text

from ..auth import DEFAULT_URL as DEFAULT_AUTH
from ..auth.guard import PROOF_KEY
from ..client import Client, ClientCall, ClientNext, ClientWrapper
from ..client.http import HTTPTransport
from ..errors import MicroError
from ..registry import Node, Registry
from ..registry import Service as ServiceRecord
from .auth import AuthOption, read_secret, registration_check
from .common import (
    DEFAULT_URL,
    JsonOption,
    MetadataOption,
    RegistryOption,
    console,
    errors,
    every_node,
    pairs,
    print_json,
    print_table,
    with_registry,
)

__all__ = ["TransportName", "call", "describe", "health", "services"]

T = TypeVar("T")


class TransportName(enum.StrEnum):
    http = "http"
    grpc = "grpc"


def services(registry: RegistryOption = DEFAULT_URL, as_json: JsonOption = False) -> None:
    """List the services in the registry."""
    found = with_registry(registry, lambda r: r.list_services())
    if as_json:
        print_json([service.to_dict() for service in found])
        return
    table = Table("service", "version", "nodes", "addresses")
    for service in sorted(found, key=lambda s: (s.name, s.version)):
        addresses = ", ".join(sorted(node.address for node in service.nodes))
        table.add_row(service.name, service.version, str(len(service.nodes)), addresses)
    if found:
        print_table(table)
    else:
        console.print("no services found")


def describe(
    name: Annotated[str, typer.Argument(help="Service name.")],
    registry: RegistryOption = DEFAULT_URL,
    auth: AuthOption = DEFAULT_AUTH,
    as_json: JsonOption = False,
) -> None:
    """Show a service's nodes, whether their registrations verify, and its endpoints with
    their schemas."""
    found = with_registry(registry, lambda r: every_node(r, name))
    if not found:
        errors.print(f"service {name!r} not found")
        raise typer.Exit(1)
    try:
        trusts = registration_check(auth)
    except ValueError as exc:
        errors.print(str(exc))
        raise typer.Exit(2) from None
    if as_json:
        described = []
        for service in found:
            data = service.to_dict()
            for node, entry in zip(service.nodes, data["nodes"], strict=True):
                entry["registration"] = _registration(trusts, service.name, node)
            described.append(data)
        print_json(described)
        return
    for service in found:
        _print_service(service, trusts)


def call(
    service: Annotated[str, typer.Argument(help="Service name.")],
    endpoint: Annotated[str, typer.Argument(help="Endpoint, e.g. Greeter.Hello.")],
    request: Annotated[
        str,
        typer.Argument(
            help="Request as JSON; for an endpoint that streams requests, a JSON array of "
            "them, or - to read one JSON request per line from stdin."
        ),
    ] = "{}",
    address: Annotated[
        str | None, typer.Option(help="Call this host:port, skip the registry.")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds.")] = 5.0,
    metadata: MetadataOption = None,
    transport: Annotated[
        TransportName,
        typer.Option(help="Over HTTP, or over gRPC (to the node's gRPC port, or --address)."),
    ] = TransportName.http,
    stream: Annotated[
        bool | None,
        typer.Option(
            "--stream/--no-stream",
            show_default=False,
            help="Whether the endpoint streams; by name it is known from the registry, with "
            "--address it is a plain call unless --stream.",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            metavar="TOKEN",
            show_default=False,
            help="Send Authorization: Bearer TOKEN (- reads it from stdin); by name, only to "
            "nodes whose registration verifies under the key ring of --auth.",
        ),
    ] = None,
    auth: AuthOption = DEFAULT_AUTH,
    registry: RegistryOption = DEFAULT_URL,
) -> None:
    """Call an endpoint and print the reply as JSON; a stream's replies one JSON per line, as
    they come (client and bidirectional streams go over gRPC)."""
    payload = _requests(request)
    extra = pairs(metadata or [])
    wrappers: list[ClientWrapper] = []
    trusts = None
    if token is not None:
        wrappers.append(_bearer(read_secret(token, "token")))
        if address is None:
            try:
                trusts = registration_check(auth)
            except ValueError as exc:
                errors.print(str(exc))
                raise typer.Exit(2) from None

    async def go(reg: Registry) -> Any:
        kind = "server" if stream else None
        if address is None:
            kind = _endpoint_kind(await reg.get_service(service), service, endpoint, stream)
        client = Client(
            registry=reg,
            caller="asgi-micro-cli",
            timeout=timeout,
            wrappers=wrappers,
            trusts=trusts,
        )
        over: Literal["http", "grpc"] = "grpc" if transport is TransportName.grpc else "http"
        requests = payload
        if kind in ("client", "bidi"):
            over = "grpc"  # over HTTP these are WebSockets, which the client does not speak
            requests = payload if isinstance(payload, list) else [payload]
        elif isinstance(payload, list) and kind is None:
            raise ValueError(f"{endpoint} does not stream requests: give it one JSON object")
        try:
            if kind is None:
                return await client.call(
                    service, endpoint, payload, address=address, metadata=extra, transport=over
                )
            replies = client.stream(
                service, endpoint, requests, address=address, metadata=extra, transport=over
            )
            async with contextlib.aclosing(replies):
                async for reply in replies:
                    console.file.write(orjson.dumps(reply).decode() + "\n")
                    console.file.flush()
            return _STREAMED
        finally:
            await client.aclose()

    result = with_registry(registry, go)
    if result is not _STREAMED:
        print_json(result)


_STREAMED: Final = object()


def _requests(request: str) -> Any:
    """The request argument: JSON, or ``-`` for JSON lines on stdin (a stream of requests)."""
    if request == "-":
        lines = [line for line in sys.stdin.read().splitlines() if line.strip()]
        source = "stdin"
    else:
        lines, source = [request], "the request"
    try:
        parsed = [orjson.loads(line) for line in lines]
    except orjson.JSONDecodeError as exc:
        errors.print(f"{source} is not valid JSON: {exc}")
        raise typer.Exit(2) from None
    return parsed if request == "-" else parsed[0]


def _endpoint_kind(
    found: list[ServiceRecord], service: str, endpoint: str, stream: bool | None
) -> str | None:
    """How ``endpoint`` streams (``server``, ``client``, ``bidi``), ``None`` for a plain call;
    an endpoint that no version of ``service`` has is refused with the ones that exist."""
    names = sorted({e.name for record in found for e in record.endpoints})
    if found and names and endpoint not in names:
        raise ValueError(f"{service} has no endpoint {endpoint!r}; it has: {', '.join(names)}")
    kinds = {
        e.metadata.get("stream") or None
        for record in found
        for e in record.endpoints
        if e.name == endpoint
    }
    kind = kinds.pop() if len(kinds) == 1 else None
    if stream is not None:
        return (kind or "server") if stream else None
    return kind


def _bearer(token: str) -> ClientWrapper:
    """A client wrapper that sends ``token`` on every attempt, over HTTP and gRPC alike."""
    if not token.isascii() or not token.isprintable() or " " in token:
        # Checked here, not by the HTTP library, whose error would quote the header.
        errors.print("the token is not a bearer token (printable ASCII, no spaces)")
        raise typer.Exit(2)
    authorization = f"Bearer {token}"

    async def authorize(call: ClientCall, next: ClientNext) -> Any:
        call.context.authorization = authorization
        return await next(call)

    return authorize


def health(
    name: Annotated[str, typer.Argument(help="Service name.")],
    registry: RegistryOption = DEFAULT_URL,
    as_json: JsonOption = False,
) -> None:
    """Ask every node of a service for its health; exits 1 unless all are serving."""

    async def go(reg: Registry) -> list[dict[str, str]]:
        transport = HTTPTransport()
        try:
            services = await every_node(reg, name)
            nodes = [(service, node) for service in services for node in service.nodes]
            return list(
                await asyncio.gather(*(_health(transport, s, n.id, n.address) for s, n in nodes))
            )
        finally:
            await transport.aclose()

    rows = with_registry(registry, go)
    if as_json:
        print_json(rows)
    elif rows:
        table = Table(_node_column(), "address", "version", "status")
        for row in rows:
            style = "green" if row["status"] == "serving" else "red"
            table.add_row(row["node"], row["address"], row["version"], Text(row["status"], style))
        print_table(table)
    else:
        errors.print(f"service {name!r} not found")
    if not rows or any(row["status"] != "serving" for row in rows):
        raise typer.Exit(1)


async def _health(
    transport: HTTPTransport, service: ServiceRecord, node_id: str, address: str
) -> dict[str, str]:
    host, _, port = address.rpartition(":")
    row = {"node": node_id, "address": address, "version": service.version}
    try:
        response = await transport.request(
            host.strip("[]"), int(port), "GET", "/_micro/health", timeout=2.0
        )
        row["status"] = str(orjson.loads(response.body).get("status", response.status))
    except (MicroError, orjson.JSONDecodeError, ValueError) as exc:
        row["status"] = f"unreachable ({type(exc).__name__})"
    return row


def _print_service(service: ServiceRecord, trusts: Callable[[str, Node], bool] | None) -> None:
    console.print(Text.assemble((service.name, "bold"), f" {service.version}"))
    nodes = Table(
        _node_column(), "address", "metadata", "registration", title="nodes", title_justify="left"
    )
    for node in service.nodes:
        registration = _registration(trusts, service.name, node)
        metadata = {**node.metadata}
        if PROOF_KEY in metadata:  # a long token, which the registration column sums up
            metadata[PROOF_KEY] = "(proof)"
        nodes.add_row(
            node.id,
            node.address,
            _compact(metadata),
            Text(registration, _REGISTRATION_STYLES[registration]),
        )
    print_table(nodes)
    endpoints = Table(
        "endpoint", "route", "request", "response", title="endpoints", title_justify="left"
    )
    for endpoint in service.endpoints:
        route = f"{endpoint.metadata.get('method', '')} {endpoint.metadata.get('path', '')}".strip()
        endpoints.add_row(
            endpoint.name, route, _fields(endpoint.request), _fields(endpoint.response)
        )
    print_table(endpoints)


_REGISTRATION_STYLES: Final = {"verified": "green", "unverified": "red", "auth off": "dim"}


def _registration(trusts: Callable[[str, Node], bool] | None, service: str, node: Node) -> str:
    """``Service.trusts_node``'s verdict on ``node``, as ``describe`` shows it."""
    if trusts is None:
        return "auth off"
    return "verified" if trusts(service, node) else "unverified"


def _node_column() -> Column:
    # Folded rather than cut short: people copy node ids out of these tables.
    return Column("node", overflow="fold")


def _fields(schema: dict[str, Any] | None) -> str:
    if not schema:
        return ""
    if "$ref" in schema:
        schema = schema.get("$defs", {}).get(schema["$ref"].rpartition("/")[2], schema)
    properties = schema.get("properties")
    if not properties:
        if schema.get("type") == "object" and "additionalProperties" not in schema:
            return str(schema.get("title") or "object")  # a model without fields
        return _type_name(schema)
    required = set(schema.get("required", ()))
    return ", ".join(
        f"{name}{'' if name in required else '?'}: {_type_name(spec)}"
        for name, spec in properties.items()
    )


def _type_name(spec: dict[str, Any]) -> str:
    kind = spec.get("type")
    if kind == "array" and isinstance(spec.get("items"), dict):
        return f"[]{_type_name(spec['items'])}"
    if kind == "object" and isinstance(spec.get("additionalProperties"), dict):
        return f"map[string]{_type_name(spec['additionalProperties'])}"
    if kind is not None:
        return str(kind)
    if "$ref" in spec:
        return str(spec["$ref"].rpartition("/")[2])
    if "anyOf" in spec:
        return " | ".join(_type_name(option) for option in spec["anyOf"])
    return "any"


def _compact(mapping: dict[str, str]) -> str:
    return ", ".join(f"{key}={value}" for key, value in sorted(mapping.items()))
