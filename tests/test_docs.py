"""The docs build strictly, and their examples run: the docs cannot rot."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from fastapi import FastAPI

from asgi_micro import Service, errors
from asgi_micro.registry.memory import MemoryRegistry
from tests.helpers import serve

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"


def load(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import a docs example with an in-process registry instead of mDNS."""
    monkeypatch.setenv("MICRO_REGISTRY", "memory://")
    spec = importlib.util.spec_from_file_location(f"docs_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mkdocs_builds_strictly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    # Every snippet marker was replaced by its example file.
    for page in tmp_path.rglob("*.html"):
        html = page.read_text()
        assert "--8&lt;--" not in html, page
        assert "--8 &lt;" not in html, page
    assert (
        'MicroRouter</span><span class="p">(</span><span class="s2">"Greeter"'
        in (tmp_path / "index.html").read_text()
    )


async def test_quickstart_and_calling(monkeypatch: pytest.MonkeyPatch) -> None:
    quickstart = load("quickstart", monkeypatch)
    calling = load("calling", monkeypatch)
    async with serve(quickstart.app):
        await quickstart.service.wait_registered()
        async with Service("caller", registry=quickstart.service.registry) as caller:
            assert await calling.greet(caller, "Ada") == "Hello Ada"
            assert (await calling.greet(caller, "")) == "Hello "


async def test_adopting_an_app(monkeypatch: pytest.MonkeyPatch) -> None:
    adopt = load("adopt", monkeypatch)
    service = adopt.app.user_middleware[0].kwargs["service"]
    async with serve(adopt.app) as address, httpx.AsyncClient(base_url=f"http://{address}") as http:
        await service.wait_registered()
        assert (await http.get("/items/7")).json() == {"id": 7}
        assert (await http.get("/_micro/health")).json()["status"] == "serving"
        [record] = await service.registry.get_service("inventory")
    assert [endpoint.name for endpoint in record.endpoints] == ["GET /items/{item_id}"]


async def test_errors_example(monkeypatch: pytest.MonkeyPatch) -> None:
    example = load("errors_example", monkeypatch)
    registry = MemoryRegistry()
    service = Service("inventory", registry=registry)
    app = FastAPI(lifespan=service.lifespan)
    app.include_router(example.inventory)
    async with serve(app), Service("caller", registry=registry) as caller:
        await service.wait_registered()
        item = await caller.client.call("inventory", "Inventory.Get", {"sku": "apple"})
        assert item == {"sku": "apple", "stock": 3}
        with pytest.raises(errors.NotFound, match="no item 'pear'"):
            await caller.client.call("inventory", "Inventory.Get", {"sku": "pear"})


async def test_resilient_client_example(monkeypatch: pytest.MonkeyPatch) -> None:
    example = load("resilient", monkeypatch)
    quickstart = load("quickstart", monkeypatch)
    registry = quickstart.service.registry
    async with serve(quickstart.app), Service("caller", registry=registry) as caller:
        await quickstart.service.wait_registered()
        await example.configure(caller)
        assert caller.client.retries == 3
        with pytest.raises(errors.ServiceUnavailable, match=r"at version 2\.0\.0"):
            await example.stock(caller, "apple")


async def test_wrappers_example(monkeypatch: pytest.MonkeyPatch) -> None:
    page = load("wrappers", monkeypatch)
    async with serve(page.app) as address:
        await page.service.wait_registered()
        async with httpx.AsyncClient(base_url=f"http://{address}") as http:
            refused = await http.post("/greeter/hello", json={"name": "Ada"})
            member = await http.post(
                "/greeter/hello", json={"name": "Ada"}, headers={"Micro-Member": "yes"}
            )
        # The service's own client is a member: its wrapper says so on every call.
        reply = await page.service.client.call("greeter", "Greeter.Hello", {"name": "Bo"})
    assert refused.status_code == 403
    assert refused.json()["detail"] == "Greeter.Hello is for members"
    assert member.json() == {"message": "Hello Ada"}
    assert reply == {"message": "Hello Bo"}
