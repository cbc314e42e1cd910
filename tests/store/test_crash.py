"""A SQLite store keeps every write it acknowledged when its process is killed mid-stream."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from pathlib import Path

from asgi_micro.store.sql import SQLStore
from tests.store.crash_writer import value_for

ROOT = Path(__file__).resolve().parents[2]
ACKNOWLEDGED_BEFORE_KILL = 300


async def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    url = f"sqlite:///{path}"
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.store.crash_writer",
        url,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    acknowledged: list[str] = []
    try:
        while len(acknowledged) < ACKNOWLEDGED_BEFORE_KILL:
            line = await asyncio.wait_for(child.stdout.readline(), timeout=30)
            assert line, f"the writer exited early with {await child.wait()}"
            acknowledged.append(line.decode().strip())
        os.kill(child.pid, signal.SIGKILL)
        # keys printed before the kill are acknowledged too; the pipe holds them until EOF
        rest = await asyncio.wait_for(child.stdout.read(), timeout=30)
        acknowledged += rest.decode().split()
    finally:
        if child.returncode is None:
            child.kill()
        await child.wait()
    assert child.returncode == -signal.SIGKILL

    async with SQLStore.from_url(url) as store:
        keys = set(await store.list(prefix="key/"))
        missing = [key for key in acknowledged if key not in keys]
        assert not missing, f"{len(missing)} acknowledged writes lost, first {missing[0]}"
        for key in acknowledged[-20:]:
            [record] = await store.read(key)
            assert record.value == value_for(key)
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    connection.close()
