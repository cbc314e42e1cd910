"""The ``backend`` fixture runs a test once on SQLite and once on PostgreSQL.

PostgreSQL runs on 127.0.0.1:5432 (database ``test``); each test gets a schema of its own,
dropped afterwards, so parallel runs do not collide.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from asgi_micro.data import Database
from tests.helpers import require_server

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


@dataclass(frozen=True)
class Backend:
    url: str
    schema: str | None = None

    def database(self, **options: Any) -> Database:
        return Database.from_url(self.url, schema=self.schema, **options)


async def drop_schema(name: str) -> None:
    connection = await asyncpg.connect(POSTGRES_URL)
    try:
        await connection.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
    finally:
        await connection.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        yield Backend(f"sqlite:///{tmp_path}/.micro/data.db")
        return
    require_server("PostgreSQL", "127.0.0.1", 5432)
    schema = f"test_data_{uuid.uuid4().hex[:12]}"
    try:
        yield Backend(POSTGRES_URL, schema)
    finally:
        await drop_schema(schema)
