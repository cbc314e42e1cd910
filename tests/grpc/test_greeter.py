"""The example greeter over gRPC, called by a client that grpcio-tools generates in the test from
what ``asgi-micro proto`` prints; the standard health and reflection clients."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_tools import protoc

from asgi_micro.cli.proto import proto
from example_apps.greeter import app as greeter_app

from .conftest import GREETER, Greeter


def generate_client(text: str, directory: Path) -> tuple[Any, Any]:
    source, output = directory / "proto", directory / "generated"
    source.mkdir()
    output.mkdir()
    (source / "greeter.proto").write_text(text, encoding="utf-8")
    include = resources.files("grpc_tools") / "_proto"
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"--proto_path={source}",
            f"--proto_path={include}",
            f"--python_out={output}",
            f"--grpc_python_out={output}",
            "greeter.proto",
        ]
    )
    assert code == 0, "protoc failed; its errors are in the captured stderr"
    importlib.invalidate_caches()
    return importlib.import_module("greeter_pb2"), importlib.import_module("greeter_pb2_grpc")


async def test_a_client_generated_from_asgi_micro_proto_calls_the_greeter(
    greeter: Greeter,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    proto(str(GREETER))
    text = capsys.readouterr().out
    assert "service Greeter {" in text
    monkeypatch.syspath_prepend(str(tmp_path / "generated"))
    messages, services = generate_client(text, tmp_path)

    async with grpc.aio.insecure_channel(greeter.grpc) as channel:
        stub = services.GreeterStub(channel)

        reply = await stub.Hello(
            messages.HelloRequest(name="Ada"), metadata=(("micro-greeting", "Hi"),), timeout=10
        )
        assert reply.message == "Hi Ada"

        request = messages.GreetingsRequest(name="Bob", count=3)
        greetings = [reply.message async for reply in stub.Greetings(request, timeout=10)]
        assert greetings == ["Hello Bob (1)", "Hello Bob (2)", "Hello Bob (3)"]
        # A client that leaves count out gets the model's default (3), not proto3's 0.
        request = messages.GreetingsRequest(name="Cy")
        greetings = [reply.message async for reply in stub.Greetings(request, timeout=10)]
        assert greetings == ["Hello Cy (1)", "Hello Cy (2)", "Hello Cy (3)"]

        async def visitors() -> AsyncIterator[Any]:
            for name in ("Ada", "Grace", "Linus"):
                yield messages.HelloRequest(name=name)

        chat = [reply.message async for reply in stub.Chat(visitors(), timeout=10)]
        assert chat == ["Hello Ada", "Hello Grace", "Hello Linus"]


async def test_the_health_client_reports_serving_then_not_serving_while_draining(
    greeter: Greeter, channel: grpc.aio.Channel
) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    for name in ("", "greeter.Greeter"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
        assert reply.status == serving

    greeter.service.drain_grace = 0.0
    await greeter.service.drain()

    for name in ("", "greeter.Greeter"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    # Draining still serves the calls of clients that have not noticed yet.
    hello = channel.unary_unary("/greeter.Greeter/Hello")
    assert await hello(b"\n\x03Ada", timeout=10) == b"\n\tHello Ada"


async def test_a_reflection_client_lists_and_describes_the_service(
    channel: grpc.aio.Channel,
) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="greeter.Greeter"),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="grpc.health.v1.Health"),
    ]
    listed, greeter_file, health_file = [
        reply async for reply in stub.ServerReflectionInfo(iter(requests), timeout=10)
    ]
    names = {service.name for service in listed.list_services_response.service}
    assert {"greeter.Greeter", "grpc.health.v1.Health"} <= names
    assert greeter_file.file_descriptor_response.file_descriptor_proto
    assert health_file.file_descriptor_response.file_descriptor_proto


async def test_the_registry_record_says_where_and_how_to_call_over_grpc(greeter: Greeter) -> None:
    [record] = await greeter.service.registry.get_service("greeter")
    [node] = record.nodes
    assert node.metadata["grpc"] == greeter.grpc
    assert greeter.grpc != node.address  # its own port, on the HTTP host
    assert greeter.grpc.rpartition(":")[0] == node.address.rpartition(":")[0]
    endpoints = {endpoint.name: endpoint.metadata for endpoint in record.endpoints}
    assert endpoints["Greeter.Hello"]["grpc"] == "/greeter.Greeter/Hello"
    assert endpoints["Greeter.Greetings"] == {
        "kind": "rpc",
        "method": "POST",
        "path": "/greeter/greetings",
        "idempotent": "true",
        "stream": "server",
        "grpc": "/greeter.Greeter/Greetings",
        "description": inspect.getdoc(greeter_app.greetings),  # what MCP tools describe
    }
    assert endpoints["Greeter.Chat"]["method"] == "WEBSOCKET"
    assert endpoints["Greeter.Chat"]["stream"] == "bidi"
    assert "grpc" not in endpoints["GET /"]
