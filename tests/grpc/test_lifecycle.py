"""The gRPC server's life with the service's: graceful stop, and the event loops it runs in
(uvicorn's asyncio loop in this process; uvloop under ``asgi-micro run``; plain ``uvicorn``
in a process of its own)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence

import httpx
import pytest

from asgi_micro import errors
from asgi_micro.client.grpc import GrpcTransport
from asgi_micro.registry import Service as ServiceRecord
from example_apps.greeter.messages import HelloRequest, HelloResponse
from tests.helpers import eventually, free_port

from .conftest import ROOT, Echo, Lab


async def test_stopping_drains_the_call_in_flight_and_refuses_new_ones(lab: Lab) -> None:
    address = lab.grpc
    async with GrpcTransport(connect_timeout=1.0) as transport:
        call = asyncio.create_task(
            transport.unary(address, "/lab.Lab/Slow", Echo(seconds=0.5), timeout=10)
        )
        await asyncio.wait_for(lab.observed.started.wait(), 10)
        assert lab.service.stats.in_flight == 1

        await lab.service.stop()

        assert await call == {"text": "done", "seconds": 0.0}
        assert lab.observed.finished == ["slow"]
        with pytest.raises((errors.ConnectionFailed, errors.ConnectionLost)):
            await transport.unary(address, "/lab.Lab/Slow", Echo(), timeout=5)


@contextlib.asynccontextmanager
async def process(command: Sequence[str], port: int) -> AsyncIterator[asyncio.subprocess.Process]:
    """A server in a process of its own, on loopback, with its records in memory."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MICRO_")}
    env.update(MICRO_REGISTRY="memory://", MICRO_STORE="memory://")
    child = await asyncio.create_subprocess_exec(
        *command,
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield child
    finally:
        if child.returncode is None:
            child.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(child.wait(), 15)
            except TimeoutError:
                child.kill()
                await child.wait()


async def grpc_address_of(port: int, child: asyncio.subprocess.Process) -> str:
    """The node's gRPC address, from its own registry record."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as http:

        async def advertised() -> str | None:
            if child.returncode is not None:
                assert child.stderr is not None
                raise AssertionError((await child.stderr.read()).decode())
            try:
                response = await http.get("/_micro/registry", timeout=1.0)
            except httpx.TransportError:
                return None
            record = ServiceRecord.from_dict(response.json())
            return record.nodes[0].metadata.get("grpc") if record.nodes else None

        return await eventually(advertised, timeout=30, interval=0.1, message="gRPC advertised")


@pytest.mark.parametrize(
    "runner",
    [
        pytest.param("asgi-micro run", id="asgi-micro run (uvloop)"),
        pytest.param("uvicorn", id="plain uvicorn (asyncio loop)"),
    ],
)
async def test_grpc_runs_in_the_servers_event_loop(runner: str) -> None:
    port = free_port()
    if runner == "uvicorn":
        command = [sys.executable, "-m", "uvicorn", "example_apps.greeter.app:app"]
        command += ["--port", str(port), "--loop", "asyncio", "--log-level", "warning"]
    else:
        command = [sys.executable, "-m", "asgi_micro", "run", "example_apps/greeter/app.py"]
        command += ["--port", str(port), "--log-level", "warning"]
    async with process(command, port) as child, GrpcTransport() as transport:
        address = await grpc_address_of(port, child)
        reply = await transport.unary(
            address,
            "/greeter.Greeter/Hello",
            HelloRequest(name="Ada"),
            response_model=HelloResponse,
            timeout=10,
        )
        assert reply == HelloResponse(message="Hello Ada")
        child.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(child.wait(), 15) == 0
