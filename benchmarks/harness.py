"""What every benchmark here needs around its servers: a free loopback port, waiting for a
server to listen, CPU seconds read from ``/proc`` (server CPU per request is steadier than
req/s on a shared machine), and another revision of asgi-micro served beside this one
(``--against REF``), so that a change is measured against what it changes in the same run;
and, in process, awaitables timed in shuffled turns (``in_turns``)."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), or of this process."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for_port(
    port: int, server: subprocess.Popen[bytes] | None = None, timeout: float = 60.0
) -> None:
    """Return once something listens on ``port``; fail when ``server`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server is not None and server.poll() is not None:
            raise RuntimeError(f"the server for port {port} exited")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the server did not listen on {port}")


# -- another revision of asgi-micro in the same run ---------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def checkout(ref: str | None) -> Iterator[Path | None]:
    """A work tree of the repository at ``ref`` (``git worktree``, removed afterwards), so that
    a benchmark can serve that revision beside this one and compare them in one run; ``None``
    without a ref."""
    if ref is None:
        yield None
        return
    directory = Path(tempfile.mkdtemp(prefix="asgi-micro-against-"))
    tree = directory / "tree"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), ref],
        check=True,
        capture_output=True,
    )
    try:
        yield tree
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(directory, ignore_errors=True)


def python_in(tree: Path | None) -> tuple[list[str], dict[str, str]]:
    """How to run a benchmark script of ``tree`` (this one when ``None``): the interpreter,
    and an environment importing that tree's ``asgi_micro``."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    return [sys.executable], env


class Worker:
    """A benchmark script of ``tree`` in a child process, timing batches in process on demand
    (``script --worker``: one line ``kind calls`` in, microseconds per call out). Runs of two
    revisions then alternate as batches of one process do."""

    def __init__(self, tree: Path | None, script: str, *args: str, core: int = 1) -> None:
        command, env = python_in(tree)
        path = (tree or ROOT) / "benchmarks" / script
        # Every worker on the same core, so that what they are compared in is the same.
        pin = ["taskset", "-c", str(core)] if shutil.which("taskset") else []
        self.process = subprocess.Popen(
            [*pin, *command, str(WORKER), str(path), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def time(self, kind: str, calls: int) -> float:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(f"{kind} {calls}\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the worker for {kind} exited")
        return float(line)

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=30)


WORKER = Path(__file__).with_name("worker.py")


def alternate(
    script: str, runs: dict[str, tuple[str, Path | None]], rounds: int, batch: int
) -> dict[str, float]:
    """Time ``runs`` (name -> (kind, tree); ``None`` for this tree) of ``script`` in process:
    a worker per tree, all on one core, batches of ``batch`` calls in shuffled order each round;
    the median microseconds per call of each."""
    workers = {tree: Worker(tree, script) for tree in {tree for _, tree in runs.values()}}
    try:
        timings: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(rounds):
            order = list(runs)
            random.shuffle(order)
            for name in order:
                kind, tree = runs[name]
                timings[name].append(workers[tree].time(kind, batch))
    finally:
        for worker in workers.values():
            worker.close()
    return {name: statistics.median(values) for name, values in timings.items()}


async def in_turns(
    runs: dict[str, Callable[[], Awaitable[Any]]], rounds: int, batch: int
) -> dict[str, float]:
    """Await each of ``runs`` ``batch`` times in a row, in shuffled order, ``rounds`` times
    over in this loop; the median microseconds per await of each."""
    timings: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        order = list(runs)
        random.shuffle(order)
        for name in order:
            run = runs[name]
            started = time.perf_counter()
            for _ in range(batch):
                await run()
            timings[name].append((time.perf_counter() - started) / batch * 1e6)
    return {name: statistics.median(values) for name, values in timings.items()}
