"""The store conformance suite (``asgi_micro.testing.store``) on memory, SQLite and PostgreSQL,
each through its harness in ``conftest.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from asgi_micro.testing.store import StoreConformance
from tests.helpers import require_server
from tests.store.conftest import MemoryHarness, PostgresHarness, SQLiteHarness


class TestMemory(MemoryHarness, StoreConformance):
    pass


class TestSQLite(SQLiteHarness, StoreConformance):
    @pytest.fixture(autouse=True)
    def _directory(self, tmp_path: Path) -> None:
        self.directory = tmp_path


class TestPostgreSQL(PostgresHarness, StoreConformance):
    @pytest.fixture(autouse=True)
    def _server(self) -> None:
        require_server("PostgreSQL", "127.0.0.1", 5432)
