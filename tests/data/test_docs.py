"""The example of docs/data.md runs as written: a service keeping typed rows in SQLite."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from tests.helpers import serve

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "data.py"


def load(monkeypatch: pytest.MonkeyPatch, database: str) -> ModuleType:
    monkeypatch.setenv("MICRO_REGISTRY", "memory://")
    monkeypatch.setenv("MICRO_DATABASE", database)
    spec = importlib.util.spec_from_file_location("docs_example_data", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_data_example_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    example = load(monkeypatch, f"sqlite:///{tmp_path}/todos.db")
    async with (
        serve(example.app) as address,
        httpx.AsyncClient(base_url=f"http://{address}", trust_env=False) as http,
    ):
        added = await http.post("/todos/add", json={"title": "write docs"})
        await http.post("/todos/add", json={"title": "ship", "done": True})
        listed = await http.get("/todos")
    assert added.json() == {"id": 1, "title": "write docs", "done": False}
    assert listed.json() == [added.json()]
    assert (tmp_path / "todos.db").exists()
