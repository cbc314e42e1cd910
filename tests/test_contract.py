"""The example services serve what their OpenAPI documents say.

Schemathesis, with every check, runs over the document each service serves at
``/openapi.json``, against the services started as the README starts them (the frontend calls
the greeter by name, over mDNS on loopback). RPC bodies go in JSON and msgpack
(``tests/contract_hooks.py``). The seed is fixed, so a run tests the same cases every time; a
failure names the case and the curl command that reproduces it.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
import pytest

from tests.helpers import eventually
from tests.processes import FRONTEND, GREETER, ROOT, Server, environment, serving

pytestmark = pytest.mark.slow

SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
MAX_EXAMPLES = 40  # per operation
SEED = 20261201


async def schemathesis(server: Server, workdir: Path, *, timeout: float = 60.0) -> str:
    """``schemathesis run`` over what ``server`` documents; its output, or a failure with it."""
    process = await asyncio.create_subprocess_exec(
        SCHEMATHESIS,
        "run",
        f"{server.url}/openapi.json",
        "--checks=all",
        f"--max-examples={MAX_EXAMPLES}",
        f"--seed={SEED}",
        "--workers=1",
        "--generation-database=none",  # nothing remembered between runs
        "--no-color",
        cwd=workdir,  # where it keeps its crash cache
        env={
            **environment(),
            "PYTHONPATH": str(ROOT),
            "SCHEMATHESIS_HOOKS": "tests.contract_hooks",
            "COLUMNS": "120",
        },
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    finally:
        if process.returncode is None:
            process.kill()
            await process.communicate()
    text = output.decode(errors="replace")
    assert process.returncode == 0, f"schemathesis found problems in {server.target}:\n{text}"
    return text


async def test_the_examples_serve_what_they_document(tmp_path: Path) -> None:
    async with (
        serving(GREETER, FRONTEND) as [greeter, frontend],
        httpx.AsyncClient(trust_env=False, timeout=5.0) as http,
    ):

        async def greeter_found() -> bool:
            return (await http.get(f"{frontend.url}/welcome/Ada")).status_code == 200

        await eventually(greeter_found, timeout=10.0, message="the frontend reaching the greeter")
        for server in (greeter, frontend):
            output = await schemathesis(server, tmp_path)
            assert " passed" in output, output  # it did test something
