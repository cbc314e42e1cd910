"""Services and ``asgi-micro`` commands in processes of their own, for the end-to-end tests.

Each server runs in a session of its own, so that a signal reaches everything it started
(``--reload`` runs a supervisor and a worker), and is stopped with SIGINT, as Ctrl-C would: a
node killed outright stays in its peers' mDNS caches for its TTL and would haunt later tests.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import orjson

from tests.helpers import eventually, free_port

__all__ = [
    "ASGI_MICRO",
    "FRONTEND",
    "GREETER",
    "ROOT",
    "CommandResult",
    "Server",
    "asgi_micro",
    "environment",
    "listing",
    "patient",
    "serving",
]

ROOT = Path(__file__).resolve().parents[1]
# The console script installed beside this interpreter: what a user types.
ASGI_MICRO = (str(Path(sys.executable).with_name("asgi-micro")),)
GREETER = "example_apps/greeter/app.py"
FRONTEND = "example_apps/frontend/app.py"

# Without bytecode to reuse (PYTHONDONTWRITEBYTECODE, or a tree that may not be written to) each
# child would spend a second compiling fastapi and pydantic: they share a cache of their own.
_BYTECODE = tempfile.mkdtemp(prefix="asgi-micro-tests-bytecode-")
atexit.register(shutil.rmtree, _BYTECODE, ignore_errors=True)


def environment() -> dict[str, str]:
    """This environment, with the embedded defaults of a fresh shell, the test's own mDNS
    domain and records in memory."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MICRO_")}
    env["MICRO_REGISTRY"] = os.environ["MICRO_REGISTRY"]
    env["MICRO_STORE"] = "memory://"
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = _BYTECODE
    return env


def listing() -> dict[str, str]:
    """The environment for a command that lists every service (``asgi-micro services``): it
    waits out a browse window for mDNS answers, and 1.5 s has not always been enough on a
    loaded machine when several commands start at once, so it is given 5."""
    return {"MICRO_REGISTRY": os.environ["MICRO_REGISTRY"] + "&timeout=5"}


def patient() -> dict[str, str]:
    """The environment for commands that look a service up while many others start at once
    (a dozen Python processes on two cores): a node's answer, due within 1.25 s, has come after
    1.5 s there, so they wait up to 15 rather than the default 3."""
    return {"MICRO_REGISTRY": os.environ["MICRO_REGISTRY"] + "&lookup_timeout=15"}


@dataclass(frozen=True)
class CommandResult:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    started: float  # time.monotonic()
    finished: float

    def json(self) -> Any:
        return orjson.loads(self.stdout)

    def __str__(self) -> str:
        took = self.finished - self.started
        return (
            f"asgi-micro {' '.join(self.args)} exited {self.returncode} after {took:.2f}s\n"
            f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"
        )


async def asgi_micro(
    *args: str, timeout: float = 30.0, env: Mapping[str, str] | None = None
) -> CommandResult:
    """Run ``asgi-micro ARGS`` to the end, as from another shell (with ``env`` added)."""
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        *ASGI_MICRO,
        *args,
        cwd=ROOT,
        env={**environment(), **(env or {})},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    finally:
        if process.returncode is None:
            process.kill()
            await process.communicate()
    assert process.returncode is not None
    return CommandResult(
        args, process.returncode, stdout.decode(), stderr.decode(), started, time.monotonic()
    )


async def spawn(
    *args: str,
    log: IO[bytes],
    command: Sequence[str] = ASGI_MICRO,
    cwd: Path = ROOT,
    env: Mapping[str, str] | None = None,
) -> asyncio.subprocess.Process:
    """Start ``asgi-micro ARGS`` as a server of its own: in this test's environment (with
    ``env`` added), its output to ``log``, in a session of its own so that its whole group
    can be signalled."""
    return await asyncio.create_subprocess_exec(
        *command,
        *args,
        cwd=cwd,
        env={**environment(), **(env or {})},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )


@dataclass
class Server:
    """``asgi-micro run TARGET`` on a free loopback port."""

    target: str
    command: Sequence[str]
    args: Sequence[str]
    cwd: Path = ROOT
    port: int = field(default_factory=free_port)
    process: asyncio.subprocess.Process | None = None
    log: IO[bytes] = field(default_factory=tempfile.TemporaryFile)
    env: Mapping[str, str] = field(default_factory=dict)
    """Settings of its own, on top of ``environment()``."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> None:
        self.process = await spawn(
            *("run", self.target, "--port", str(self.port), "--log-level", "warning"),
            *self.args,
            log=self.log,
            command=self.command,
            cwd=self.cwd,
            env=self.env,
        )

    async def ready(self, *, timeout: float = 30.0) -> None:
        """Wait until the node answers that it is serving (it registers before it listens)."""
        async with httpx.AsyncClient(base_url=self.url, trust_env=False) as http:

            async def serving() -> bool:
                assert self.process is not None
                if self.process.returncode is not None:
                    raise AssertionError(f"{self.target} exited early:\n{self.output()}")
                try:
                    response = await http.get("/_micro/health", timeout=1.0)
                except httpx.TransportError:
                    return False
                return response.status_code == 200 and response.json()["status"] == "serving"

            await eventually(serving, timeout=timeout, interval=0.1, message=f"{self} serving")

    def signal(self, signum: signal.Signals) -> None:
        os.killpg(self.pid, signum)

    async def exited(self, *, timeout: float = 10.0) -> int:
        assert self.process is not None
        return await asyncio.wait_for(self.process.wait(), timeout)

    async def close(self) -> None:
        """Stop gracefully if it still runs; kill whatever is left of its session."""
        try:
            if self.process is None:
                return
            if self.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self.signal(signal.SIGINT)
                with contextlib.suppress(TimeoutError):
                    await self.exited(timeout=10.0)
            with contextlib.suppress(ProcessLookupError):
                self.signal(signal.SIGKILL)
            await self.process.wait()
        finally:
            self.log.close()

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def __str__(self) -> str:
        return f"asgi-micro run {self.target} on {self.address}"


@contextlib.asynccontextmanager
async def serving(
    *targets: str,
    command: Sequence[str] = ASGI_MICRO,
    args: Sequence[str] = (),
    cwd: Path = ROOT,
) -> AsyncIterator[list[Server]]:
    """Start a server per target at once, wait until all serve, stop them all at the end."""
    servers = [Server(target, command, args, cwd) for target in targets]
    try:
        for server in servers:
            await server.start()
        await asyncio.gather(*(server.ready() for server in servers))
        yield servers
    finally:
        await asyncio.gather(*(server.close() for server in servers))
