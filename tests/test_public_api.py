from __future__ import annotations

import importlib

import pytest


def _isort_order(name: str) -> tuple[int, str]:
    """Constants, then classes, then functions: the order ruff's RUF022 keeps."""
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)


MODULES = [
    "asgi_micro.client.codegen",
    "asgi_micro.client.typed",
    "asgi_micro.group",
    "asgi_micro.local",
    "asgi_micro.testing.cluster",
    "asgi_micro.client.http",
    "asgi_micro.client.httpx_transport",
    "asgi_micro.store",
    "asgi_micro.store.base",
    "asgi_micro.store.memory",
    "asgi_micro.store.sql",
    "asgi_micro.protobuf",
    "asgi_micro.grpc",
    "asgi_micro.streaming",
    "asgi_micro.router",
    "asgi_micro.client.grpc",
    "asgi_micro.client.selector",
    "asgi_micro.client.retry",
    "asgi_micro",
    "asgi_micro.errors",
    "asgi_micro.codec",
    "asgi_micro.context",
    "asgi_micro.registry",
    "asgi_micro.registry.mdns",
    "asgi_micro.pipeline",
    "asgi_micro.messages",
    "asgi_micro.naming",
    "asgi_micro.settings",
    "asgi_micro.registrar",
    "asgi_micro.signals",
    "asgi_micro.routes",
    "asgi_micro.middleware",
    "asgi_micro.service",
    "asgi_micro.state",
    "asgi_micro.internal",
    "asgi_micro.plugins",
    "asgi_micro.fastapi",
    "asgi_micro.auth",
    "asgi_micro.auth.base",
    "asgi_micro.auth.guard",
    "asgi_micro.auth.jwt",
    "asgi_micro.auth.keys",
    "asgi_micro.auth.noop",
    "asgi_micro.auth.rules",
    "asgi_micro.data",
    "asgi_micro.config",
    "asgi_micro.config.paths",
    "asgi_micro.cli.config",
    "asgi_micro.sync",
    "asgi_micro.sync.base",
    "asgi_micro.endpoints",
    "asgi_micro.client.calls",
    "asgi_micro.cli.common",
    "asgi_micro.cli.apps",
    "asgi_micro.cli.run",
    "asgi_micro.cli.services",
    "asgi_micro.cli.store",
    "asgi_micro.cli.proto",
    "asgi_micro.cli.asyncapi",
    "asgi_micro.cli.events",
    "asgi_micro.asyncapi",
    "asgi_micro.limits",
    "asgi_micro.server",
    "asgi_micro.broker.http",
    "asgi_micro.broker.inbox",
    "asgi_micro.broker.outbox",
    "asgi_micro.broker.sender",
    "asgi_micro.broker.directory",
    "asgi_micro.metrics",
    "asgi_micro.tracing",
    "asgi_micro.registry.multicast",
    "asgi_micro.cli.doctor",
    "asgi_micro.cli.mcp",
    "asgi_micro.cli.api",
    "asgi_micro.cli.web",
    "asgi_micro.gateway.catalogue",
    "asgi_micro.gateway.mcp",
    "asgi_micro.gateway.api",
    "asgi_micro.web",
    "asgi_micro.web.app",
    "asgi_micro.web.pages",
    "asgi_micro.web.probes",
    "asgi_micro.web.schemas",
    "asgi_micro.web.changes",
    "asgi_micro.testing",
    "asgi_micro.testing.registry",
    "asgi_micro.testing.broker",
    "asgi_micro.testing.store",
    "asgi_micro.testing.sync",
    "asgi_micro.client.policies",
    "asgi_micro.client.guards",
    "asgi_micro.client.outliers",
    "asgi_micro.pipeline",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_is_complete_and_sorted(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert exported == sorted(exported, key=_isort_order), f"{name}.__all__ is not sorted"
    for attribute in exported:
        assert hasattr(module, attribute), f"{name}.__all__ names missing {attribute}"
    public = {
        attribute
        for attribute, value in vars(module).items()
        if not attribute.startswith("_")
        and getattr(value, "__module__", name).startswith(name)
        and (isinstance(value, type) or callable(value))
    }
    assert public <= set(exported), (
        f"{name} has public names outside __all__: {public - set(exported)}"
    )
