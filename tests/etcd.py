"""A real etcd for the tests: Debian's ``etcd-server``, started on free loopback ports.

``etcd_server()`` runs one ``etcd`` with a data directory of its own and yields its client URL
(``http://127.0.0.1:<port>``); it is stopped and its directory removed afterwards, even when the
test fails; given ``data_dir`` it keeps its data there instead, and leaves it, so that a test
can stop it and start another on the same ports and data, as a restart (an etcd inside a
network namespace is ``tests.multihost.engines.etcd_on``). The ``etcd_url`` fixture
(``tests/conftest.py``) shares one per test session: tests keep to key
prefixes of their own, so they can share it, and two runs of the suite each have their own.
Without the binary a test skips, and under ``CI=true`` fails.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.helpers import IN_CI, free_port

__all__ = ["etcd_server", "require_etcd"]


def require_etcd() -> str:
    path = shutil.which("etcd")
    if path is not None:
        return path
    message = "etcd is not installed (Debian's etcd-server)"
    if IN_CI:
        pytest.fail(f"{message}; .ci/run must install it", pytrace=False)
    pytest.skip(message)


@contextlib.contextmanager
def etcd_server(
    host: str = "127.0.0.1",
    *,
    port: int | None = None,
    peer_port: int | None = None,
    timeout: float = 20.0,
    data_dir: str | None = None,
) -> Iterator[str]:
    binary = require_etcd()
    client = f"http://{host}:{port or free_port(host)}"
    peer = f"http://{host}:{peer_port or free_port(host)}"
    with contextlib.ExitStack() as stack:
        data = data_dir or stack.enter_context(
            tempfile.TemporaryDirectory(prefix="asgi-micro-etcd-")
        )
        process = subprocess.Popen(
            [binary, "--name", "test", "--data-dir", data,
             "--listen-client-urls", client, "--advertise-client-urls", client,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"test={peer}", "--log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            _wait_healthy(client, process, timeout)
            yield client
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            assert process.stderr is not None
            process.stderr.close()


def _wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1.0) as http:
        while True:
            if process.poll() is not None:
                assert process.stderr is not None
                error = process.stderr.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"etcd exited with {process.returncode}: {error}")
            with contextlib.suppress(httpx.HTTPError, ValueError):
                response = http.get(f"{url}/health")
                if response.status_code == 200 and response.json().get("health") == "true":
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd at {url} not healthy within {timeout}s")
            time.sleep(0.1)
