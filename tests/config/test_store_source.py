"""The store as a config source, on every store backend: precedence over every other source,
changes picked up by polling within a second, invalid records rejected."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from asgi_micro.config import DEFAULTS, Change, Config, StoreSource, default_sources
from asgi_micro.store import Store
from tests.config.models import Layers, Settings
from tests.helpers import until
from tests.store.conftest import Harness, harness

__all__ = ["harness"]


@pytest.fixture
async def store(harness: Harness) -> AsyncIterator[Store]:
    async with harness.open() as opened:
        yield opened.database(f"test_{uuid.uuid4().hex[:12]}").table("greeter")


async def test_the_store_is_over_every_other_source(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = f"TEST_{uuid.uuid4().hex[:8].upper()}_"
    (tmp_path / "a.toml").write_text(
        'from_toml = "toml"\nfrom_yaml = "toml"\nfrom_json = "toml"\nfrom_dotenv = "toml"\n'
        'from_env = "toml"\nfrom_store = "toml"\n'
    )
    (tmp_path / "b.yml").write_text(
        "from_yaml: yaml\nfrom_json: yaml\nfrom_dotenv: yaml\nfrom_env: yaml\nfrom_store: yaml\n"
    )
    (tmp_path / "c.json").write_text(
        '{"from_json": "json", "from_dotenv": "json", "from_env": "json", "from_store": "json"}'
    )
    (tmp_path / ".env").write_text(
        f"{env}FROM_DOTENV=dotenv\n{env}FROM_ENV=dotenv\n{env}FROM_STORE=dotenv\n"
    )
    monkeypatch.setenv(f"{env}FROM_ENV", "env")
    monkeypatch.setenv(f"{env}FROM_STORE", "env")
    await store.write_json("config/from_store", "store")
    await store.write_json("other/from_toml", "not config")
    sources = default_sources(
        files=[tmp_path / "a.toml", tmp_path / "b.yml", tmp_path / "c.json"],
        env_file=tmp_path / ".env",
        env_prefix=env,
        store=store,
    )
    async with Config(Layers, sources=sources) as config:
        assert config.value == Layers(
            from_toml="toml",
            from_yaml="yaml",
            from_json="json",
            from_dotenv="dotenv",
            from_env="env",
            from_store="store",
        )
        names = [source.name for source in sources]
        assert [config.source_of(f"from_{kind}") for kind in ("toml", "yaml", "json")] == names[:3]
        assert config.source_of("from_dotenv") == f"dotenv:{tmp_path / '.env'}"
        assert config.source_of("from_env") == f"env:{env}"
        assert config.source_of("from_store") == (f"store:{store.database_name}/greeter/config/")
        assert config.source_of("untouched") == DEFAULTS

        # Deleting the record falls back to the source below it.
        changes = config.watch("from_store")
        await store.delete("config/from_store")
        change = await asyncio.wait_for(anext(changes), 1.0)
        assert (change.old, change.new, change.source) == ("store", "env", f"env:{env}")


async def test_a_changed_store_value_is_in_force_within_a_second(store: Store) -> None:
    await store.write_json("config/db", {"host": "db.store", "pool": 2})
    source = StoreSource(store)
    async with Config(Settings, sources=[source]) as config:
        assert config.value.db.pool == 2
        assert config.source_of("db.host") == source.name
        changes = config.watch("db.pool")
        began = time.monotonic()
        await store.write_json(source.key("db.pool"), 6)  # refines config/db
        change = await asyncio.wait_for(anext(changes), 1.0)
        elapsed = time.monotonic() - began
        assert change == Change("db.pool", 2, 6, source.name, ("db.pool",))
        assert config.value.db.host == "db.store"
        assert elapsed < 1.0


async def test_an_invalid_store_value_is_rejected(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    await store.write_json("config/db", {"pool": 3})
    source = StoreSource(store, interval=0.05)
    async with Config(Settings, sources=[source]) as config:
        before = config.value
        seen: list[Change] = []
        config.on_change(seen.append)
        with caplog.at_level(logging.WARNING, logger="asgi_micro.config.config"):
            # One record, so one change: the password must not slip in with the bad pool.
            await store.write_json("config/db", {"pool": "lots", "password": "pw-in-the-store"})
            await until(lambda: "rejected" in caplog.text, "the rejection logged", timeout=2)
            await store.write("config/greeting", b"{not json")
            await until(lambda: "invalid JSON" in caplog.text, "the JSON error logged", 2)
        assert config.value is before
        assert config.value.db.pool == 3
        assert "db.pool: Input should be a valid integer" in caplog.text
        assert "record 'config/greeting': invalid JSON" in caplog.text
        assert "pw-in-the-store" not in caplog.text
        assert seen == []
        await store.delete("config/greeting")
        await store.write_json("config/db", {"pool": 4, "password": "pw-in-the-store"})
        await until(lambda: seen, "the valid change", timeout=1)
        assert config.value.db.pool == 4
        assert config.value.db.password.get_secret_value() == "pw-in-the-store"


async def test_polling_survives_a_stopped_store(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    async with harness.open() as opened:
        store = opened.database(f"test_{uuid.uuid4().hex[:12]}")
        await store.write_json("config/greeting", "before")
        config = Config(Settings, sources=[StoreSource(store, interval=0.05)])
        await config.start()
    try:
        with caplog.at_level(logging.WARNING, logger="asgi_micro.config.sources"):
            await until(lambda: "cannot poll" in caplog.text, "the poll failure logged", 2)
        assert config.value.greeting == "before"
        assert not await config.reload()
    finally:
        await config.stop()
