"""Times in-process batches of a benchmark's ASGI apps for another process (``harness.Worker``).

    python benchmarks/worker.py <tree>/benchmarks/http_rpc.py

It imports the script (and through it that tree's ``asgi_micro``, on ``PYTHONPATH``), runs
the lifespans of the apps in its ``APPS``, and answers each line ``kind calls`` on stdin with
the microseconds per call of one batch of ``call_in_process``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import sys
from pathlib import Path
from typing import Any


def load(path: Path) -> Any:
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


async def main(path: Path) -> None:
    script = load(path)
    apps = {kind: factory() for kind, factory in script.APPS.items()}
    loop = asyncio.get_running_loop()
    async with contextlib.AsyncExitStack() as stack:
        states = {
            kind: (await stack.enter_async_context(script.Lifespan(app))).state
            for kind, app in apps.items()
        }
        for kind, app in apps.items():  # warm caches
            await script.call_in_process(app, script.PATHS[kind], 200, states[kind])
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            kind, calls = line.split()
            us = await script.call_in_process(
                apps[kind], script.PATHS[kind], int(calls), states[kind]
            )
            sys.stdout.write(f"{us}\n")
            sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
