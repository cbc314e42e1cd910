"""The gRPC modules' ``__all__``: complete and sorted, as every public module's."""

from __future__ import annotations

import pytest

from tests.test_public_api import test_all_is_complete_and_sorted as check_all


@pytest.mark.parametrize(
    "name",
    [
        "asgi_micro.grpc",
        "asgi_micro.cli.proto",
        "asgi_micro.grpc.handlers",
        "asgi_micro.grpc.schema",
        "asgi_micro.grpc.server",
        "asgi_micro.grpc.status",
        "asgi_micro.client.grpc",
        "asgi_micro.router",
        "asgi_micro.rpc",
    ],
)
def test_all_is_complete_and_sorted(name: str) -> None:
    check_all(name)
