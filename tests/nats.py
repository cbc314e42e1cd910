"""A NATS server of a test's own, to stop and restart: ``nats_server(port, store)`` runs
``nats-server`` with JetStream on ``127.0.0.1:port``, keeping its data in ``store``; without the
binary a test skips, and under ``CI=true`` fails."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import IN_CI

__all__ = ["nats_server", "wait_for_port"]


@contextlib.contextmanager
def nats_server(port: int, store: Path) -> Iterator[subprocess.Popen[bytes]]:
    binary = shutil.which("nats-server")
    if binary is None:
        message = "restarting NATS needs the nats-server binary"
        if IN_CI:
            pytest.fail(f"{message}; .ci/run must install it", pytrace=False)
        pytest.skip(message)
    process = subprocess.Popen(
        [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


async def wait_for_port(port: int) -> None:
    async def listening() -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        await writer.wait_closed()
        return True

    deadline = time.monotonic() + 5
    while not await listening():
        assert time.monotonic() < deadline, f"nats-server did not listen on {port}"
        await asyncio.sleep(0.05)
