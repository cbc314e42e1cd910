"""The examples of docs/grpc.md and docs/streaming.md run, served as the pages say."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import serve

DOCS = Path(__file__).parents[2] / "docs"


def run_page(name: str) -> dict[str, Any]:
    """Run the page's Python blocks in order, in one namespace."""
    page = DOCS / name
    namespace: dict[str, Any] = {"__name__": f"docs_{page.stem}"}
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.DOTALL)
    for index, source in enumerate(blocks):
        exec(compile(source, f"{page.name}:python[{index}]", "exec", dont_inherit=True), namespace)
    return namespace


@pytest.fixture(autouse=True)
def memory_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICRO_REGISTRY", "memory://")


async def test_the_grpc_page_serves_and_calls_hello() -> None:
    page = run_page("grpc.md")
    async with serve(page["app"]):
        service = page["service"]
        await service.wait_registered()
        reply = await page["greet"](service.grpc_server.address, "Ada")
    assert reply == page["HelloResponse"](message="Hello Ada")


async def test_the_streaming_page_streams_both_ways() -> None:
    page = run_page("streaming.md")
    async with serve(page["app"]) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}", trust_env=False) as http:
            response = await http.post("/clock/countdown", json={"start": 2})
        assert response.text == '{"left":2}\n{"left":1}\n'
        assert await page["shout_over_websocket"](address, ["hi", "there"]) == ["HI", "THERE"]
