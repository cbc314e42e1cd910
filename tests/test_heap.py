"""The start-up heap frozen out of the garbage collector's rounds: by a service started with
``MICRO_GC_FREEZE=true``, and by ``asgi-micro run`` and ``asgi-micro api`` unless it is off."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from asgi_micro import Service
from asgi_micro.registry.memory import MemoryRegistry
from tests.helpers import eventually
from tests.processes import ASGI_MICRO, GREETER, Server, spawn

FROZE = "froze "  # asgi_micro.heap's debug record


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


async def test_a_service_freezes_its_start_up_heap_only_when_asked(
    monkeypatch: pytest.MonkeyPatch, unfrozen: None
) -> None:
    monkeypatch.delenv("MICRO_GC_FREEZE", raising=False)
    async with Service("thawed", registry=MemoryRegistry(), store="memory://") as service:
        assert not service.gc_freeze
        assert gc.get_freeze_count() == 0
    monkeypatch.setenv("MICRO_GC_FREEZE", "true")
    async with Service("frozen", registry=MemoryRegistry(), store="memory://") as service:
        assert service.gc_freeze
        assert gc.get_freeze_count() > 10_000  # modules, models, the service's parts


@pytest.mark.parametrize(
    ("command", "setting", "freezes"),
    [("run", None, True), ("run", "false", False), ("api", None, True), ("api", "false", False)],
)
async def test_the_cli_freezes_unless_told_not_to(
    command: str, setting: str | None, freezes: bool
) -> None:
    server = Server(GREETER, ASGI_MICRO, ("--log-level", "debug"))
    if setting is not None:
        server.env = {"MICRO_GC_FREEZE": setting}
    try:
        if command == "run":
            await server.start()
            await server.ready()
        else:
            server.process = await spawn(
                "api", "--port", str(server.port), "--log-level", "debug",
                log=server.log, env=server.env,
            )  # fmt: skip

            async def gateway_started() -> bool:
                return "Application startup complete" in server.output()

            await eventually(gateway_started, timeout=60, interval=0.1, message="gateway up")
        assert (FROZE in server.output()) == freezes, server.output()
    finally:
        await server.close()
