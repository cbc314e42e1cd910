"""The auth page's example runs as the page says."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.helpers import serve
from tests.test_docs import load


async def test_the_auth_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICRO_AUTH_KEYS", str(tmp_path / "keys.json"))
    monkeypatch.setenv("MICRO_STORE", "memory://")
    monkeypatch.setenv("MICRO_BROKER", "memory://")
    example = load("auth", monkeypatch)
    async with serve(example.app) as address:
        token = await example.set_up()
        await example.service.guard.load_rules()
        async with httpx.AsyncClient(base_url=f"http://{address}") as http:
            body = {"name": "Bob"}
            assert (await http.post("/greeter/hello", json=body)).status_code == 401
            bearer = {"authorization": f"Bearer {token}"}
            reply = await http.post("/greeter/hello", json=body, headers=bearer)
            assert reply.json() == {"message": "Hello Bob, from ada"}
            refused = await http.post("/greeter/reset", json=body, headers=bearer)
            assert refused.status_code == 403
            assert "lacks the scope(s) admin" in refused.json()["detail"]
