"""The engines the services use at scale, each started on a host of a ``Network``: etcd,
NATS with JetStream, Redis and PostgreSQL, from the binaries the machine has (the servers it
runs already listen on the root namespace's loopback, which no host can reach).

Each is ready once a probe from inside the network says so, and is stopped, its files
removed, when its context ends, even after a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import IO

import pytest

from tests.etcd import require_etcd
from tests.helpers import IN_CI, eventually
from tests.multihost.harness import Driver
from tests.multihost.network import SUBNET, Host

__all__ = ["etcd_on", "nats_on", "postgres_on", "redis_on"]


def require_binary(name: str, path: str | None, package: str) -> str:
    if path is not None and shutil.which(path) is not None:
        return path
    message = f"{name} is not installed (Debian's {package})"
    if IN_CI:
        pytest.fail(f"{message}; .ci/run must install it", pytrace=False)
    pytest.skip(message)


async def succeeds(host: Host, *command: str) -> bool:
    """Whether ``command`` exits 0 when run on ``host`` (within 10 s)."""
    return (await run_on(host, *command))[0] == 0


async def run_on(host: Host, *command: str) -> tuple[int | None, str]:
    """``command`` run on ``host``: its exit status (``None`` if it took over 10 s, and was
    killed) and what it wrote."""
    process = await asyncio.create_subprocess_exec(
        *host.run(*command),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), 10)
    except TimeoutError:
        process.kill()
        await process.wait()
        return None, ""
    return process.returncode, output.decode(errors="replace")


@contextlib.asynccontextmanager
async def engine_on(
    host: Host,
    command: Sequence[str],
    *,
    ready: Callable[[], Awaitable[bool]],
    timeout: float = 30.0,
) -> AsyncIterator[None]:
    """``command`` running on ``host`` once ``ready()``; stopped (SIGTERM, then SIGKILL) after."""
    with tempfile.TemporaryFile() as log:
        process = await asyncio.create_subprocess_exec(
            *host.run(*command), stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log
        )

        async def started() -> bool:
            if process.returncode is not None:
                raise RuntimeError(f"{command[0]} on {host.name} exited: {_tail(log)}")
            return await ready()

        try:
            message = f"{Path(command[0]).name} ready on {host.name}"
            await eventually(started, timeout=timeout, interval=0.1, message=message)
            yield
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 10)
                except TimeoutError:
                    process.kill()
                    await process.wait()


@contextlib.asynccontextmanager
async def etcd_on(host: Host, *, via: Driver, port: int = 2379) -> AsyncIterator[str]:
    """An etcd serving clients on ``host``; yields its ``etcd://`` URL once ``via``, a driver
    on a host of the network, finds it healthy."""
    client = f"http://{host.address}:{port}"
    peer = f"http://{host.address}:{port + 1}"

    async def healthy() -> bool:
        answer = await via.get(f"{client}/health", timeout=1.0)
        return answer.get("status") == 200 and answer["body"].get("health") == "true"

    with tempfile.TemporaryDirectory(prefix="asgi-micro-etcd-") as data:
        command = [
            require_etcd(), "--name", host.name, "--data-dir", data,
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{host.name}={peer}", "--log-level", "error",
        ]  # fmt: skip
        async with engine_on(host, command, ready=healthy):
            yield f"etcd://{host.address}:{port}"


@contextlib.asynccontextmanager
async def nats_on(host: Host, *, via: Driver, port: int = 4222) -> AsyncIterator[str]:
    """A NATS server with JetStream on ``host``; yields its ``nats://`` URL."""
    binary = require_binary("nats-server", "/usr/sbin/nats-server", "nats-server")
    monitor = f"http://{host.address}:8222/healthz?js-enabled-only=true"

    async def healthy() -> bool:
        return (await via.get(monitor, timeout=1.0)).get("status") == 200

    with tempfile.TemporaryDirectory(prefix="asgi-micro-nats-") as data:
        command = [binary, "-a", host.address, "-p", str(port), "-m", "8222", "-js", "-sd", data]
        async with engine_on(host, command, ready=healthy):
            yield f"nats://{host.address}:{port}"


@contextlib.asynccontextmanager
async def redis_on(host: Host, *, port: int = 6379) -> AsyncIterator[str]:
    """A Redis server on ``host``, keeping nothing on disk; yields its ``redis://`` URL."""
    binary = require_binary("redis-server", "redis-server", "redis-server")
    cli = require_binary("redis-cli", "redis-cli", "redis-tools")
    with tempfile.TemporaryDirectory(prefix="asgi-micro-redis-") as data:
        command = [binary, "--bind", host.address, "--port", str(port), "--dir", data,
                   "--save", "", "--appendonly", "no", "--protected-mode", "no"]  # fmt: skip

        async def pong() -> bool:
            return await succeeds(host, cli, "-h", host.address, "-p", str(port), "ping")

        async with engine_on(host, command, ready=pong):
            yield f"redis://{host.address}:{port}"


@contextlib.asynccontextmanager
async def postgres_on(
    host: Host, *, user: str, database: str, port: int = 5432
) -> AsyncIterator[str]:
    """A PostgreSQL cluster of its own on ``host`` (initdb in a temporary directory, run as the
    ``postgres`` system user, trusting connections), with ``database`` owned by ``user``;
    yields its ``postgresql://`` URL."""
    [bin_dir, *_] = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True) or [""]
    postgres = require_binary(
        "PostgreSQL", f"{bin_dir}/postgres" if bin_dir else None, "postgresql"
    )
    as_postgres = ["runuser", "-u", "postgres", "--"]
    with tempfile.TemporaryDirectory(prefix="asgi-micro-postgres-") as top:
        shutil.chown(top, "postgres")
        data = f"{top}/data"
        initdb = await asyncio.create_subprocess_exec(
            *as_postgres, f"{bin_dir}/initdb", "-D", data, "-U", user, "--auth=trust",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, error = await initdb.communicate()
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed: {error.decode(errors='replace')}")
        _trust_the_network(data)
        address = ["-h", host.address, "-p", str(port), "-U", user]
        command = [*as_postgres, postgres, "-D", data, "-k", top, "-p", str(port),
                   "-c", f"listen_addresses={host.address}", "-c", "fsync=off"]  # fmt: skip

        async def accepting() -> bool:
            return await succeeds(host, f"{bin_dir}/pg_isready", *address, "-d", "postgres")

        async with engine_on(host, command, ready=accepting):
            status, output = await run_on(host, f"{bin_dir}/createdb", *address, database)
            if status != 0:
                raise RuntimeError(f"createdb {database} on {host.name} failed: {output}")
            yield f"postgresql://{user}@{host.address}:{port}/{database}"


def _trust_the_network(data: str) -> None:
    """Let the hosts in: initdb's ``--auth=trust`` trusts loopback alone."""
    with open(f"{data}/pg_hba.conf", "a") as hba:
        hba.write(f"host all all {SUBNET} trust\n")


def _tail(log: IO[bytes]) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")[-2000:]
