"""A RabbitMQ server of the test's own, to restart: Debian's ``rabbitmq-server`` started as a
node of its own (a unique node name, free loopback ports for AMQP and Erlang distribution, a
data directory of its own, no plugins), so that stopping it disturbs neither the shared server
on 5672 nor another run of the suite. ``rabbitmq_server()`` yields it started, and stops it
afterwards even when the test fails; ``restart()`` stops it as a service manager would
(SIGTERM, then SIGKILL after a while) and starts it again on the same ports and data, so that
durable queues and what they hold come back. It needs root (the server drops to the
``rabbitmq`` user, who must own the directory); without the binary or root a test skips, and
under ``CI=true`` fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest

from tests.helpers import IN_CI, free_port

__all__ = ["RabbitMQ", "rabbitmq_server"]

START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0


SERVER_SCRIPT = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
"""Debian's server script itself: ``/usr/sbin/rabbitmq-server`` runs it through ``su``, in a
session of its own that a test could not stop as one group."""


def require_rabbitmq_server() -> str:
    if SERVER_SCRIPT.exists() and os.geteuid() == 0:
        return str(SERVER_SCRIPT)
    message = "a RabbitMQ of the test's own needs rabbitmq-server, run as root"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


class RabbitMQ:
    def __init__(self, binary: str, root: Path) -> None:
        self.binary = binary
        self.root = root
        self.port = free_port()
        self.node = f"asgi-micro-{uuid.uuid4().hex[:12]}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        self.starts = 0
        self._process: asyncio.subprocess.Process | None = None
        for part in ("mnesia", "log"):
            (root / part).mkdir()
        (root / "enabled_plugins").write_text("[].\n")
        (root / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        shutil.chown(root, "rabbitmq", "rabbitmq")
        for path in root.rglob("*"):
            shutil.chown(path, "rabbitmq", "rabbitmq")
        self._env = {
            **os.environ,
            "HOME": str(root),  # the Erlang cookie of this node alone
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(root / "log"),
            "RABBITMQ_CONFIG_FILE": str(root / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(root / "enabled_plugins"),
        }

    async def start(self) -> None:
        """Start the server and return once it takes AMQP connections."""
        log = (self.root / f"start-{self.starts}.log").open("wb")
        self.starts += 1
        with log:
            self._process = await asyncio.create_subprocess_exec(
                self.binary,
                env=self._env,
                cwd=self.root,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                user="rabbitmq",
                group="rabbitmq",
                extra_groups=[],
                start_new_session=True,  # the script and its Erlang VM: one group to stop
            )
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT
        while True:
            if self._process.returncode is not None:
                raise AssertionError(f"rabbitmq-server exited:\n{self._output()}")
            try:
                connection = await aio_pika.connect(self.url, timeout=2)
            except (OSError, aio_pika.exceptions.AMQPError, TimeoutError):
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError(
                        f"RabbitMQ did not start in {START_TIMEOUT}s:\n{self._output()}"
                    ) from None
                await asyncio.sleep(0.25)
            else:
                await connection.close()
                return

    async def stop(self) -> None:
        """Stop the server as a service manager would: SIGTERM to its process group, SIGKILL
        to what is left of it after ``STOP_TIMEOUT``; returns once none of it runs."""
        process, self._process = self._process, None
        if process is None:
            return
        group = process.pid  # the session's leader: its id is the group's
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_TIMEOUT
        while True:  # the Erlang VM outlives the script that started it by a moment
            try:
                os.killpg(group, signal.SIGKILL if loop.time() > deadline else 0)
            except ProcessLookupError:
                break
            if process.returncode is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), 0.1)
            else:
                await asyncio.sleep(0.1)
        await process.wait()
        try:  # so that a connection after a start is to the new server, not this one
            _, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return
        writer.close()
        raise AssertionError(f"something still listens on {self.port} after the stop")

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    def _output(self) -> str:
        logs = sorted(self.root.glob("start-*.log"))
        return logs[-1].read_text(errors="replace")[-4000:] if logs else ""


@contextlib.asynccontextmanager
async def rabbitmq_server() -> AsyncIterator[RabbitMQ]:
    binary = require_rabbitmq_server()
    with tempfile.TemporaryDirectory(prefix="asgi-micro-rabbitmq-") as directory:
        server = RabbitMQ(binary, Path(directory))
        try:
            await server.start()
            yield server
        finally:
            await server.stop()
