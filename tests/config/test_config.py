"""``Config`` on files, ``.env`` and the environment: precedence, provenance, hot reload of
files, rejected changes, ``watch`` and ``on_change``."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from pathlib import Path

import pytest
from pydantic import SecretStr

from asgi_micro.config import (
    DEFAULTS,
    MASK,
    Change,
    Config,
    ConfigError,
    DotEnv,
    Env,
    File,
    Values,
    default_sources,
)
from tests.config.models import DB, Layers, Settings
from tests.helpers import until


def replace(path: Path, text: str) -> None:
    """Write ``path`` whole at once, as editors and config managers do: a watcher never sees
    it half written."""
    part = path.with_name(f".{path.name}.part")
    part.write_text(text)
    os.replace(part, path)


def prefix() -> str:
    return f"TEST_{uuid.uuid4().hex[:8].upper()}_"


async def test_sources_in_order_each_over_the_ones_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = prefix()
    (tmp_path / "a.toml").write_text(
        'from_toml = "toml"\nfrom_yaml = "toml"\nfrom_json = "toml"\nfrom_dotenv = "toml"\n'
        'from_env = "toml"\n'
    )
    (tmp_path / "b.yaml").write_text(
        "from_yaml: yaml\nfrom_json: yaml\nfrom_dotenv: yaml\nfrom_env: yaml\n"
    )
    (tmp_path / "c.json").write_text(
        '{"from_json": "json", "from_dotenv": "json", "from_env": "json"}'
    )
    (tmp_path / ".env").write_text(f"{env}FROM_DOTENV=dotenv\n{env}FROM_ENV=dotenv\nUNRELATED=1\n")
    monkeypatch.setenv(f"{env}FROM_ENV", "env")
    sources = default_sources(
        files=[tmp_path / "a.toml", tmp_path / "b.yaml", tmp_path / "c.json"],
        env_file=tmp_path / ".env",
        env_prefix=env,
    )
    async with Config(Layers, sources=sources) as config:
        value = config.value
        assert value == Layers(
            from_toml="toml",
            from_yaml="yaml",
            from_json="json",
            from_dotenv="dotenv",
            from_env="env",
        )
        assert config.source_of("from_toml") == f"toml:{tmp_path / 'a.toml'}"
        assert config.source_of("from_yaml") == f"yaml:{tmp_path / 'b.yaml'}"
        assert config.source_of("from_json") == f"json:{tmp_path / 'c.json'}"
        assert config.source_of("from_dotenv") == f"dotenv:{tmp_path / '.env'}"
        assert config.source_of("from_env") == f"env:{env}"
        assert config.source_of("from_store") == DEFAULTS
        assert config.source_of("untouched") == DEFAULTS
        assert config.source_of() == f"env:{env}"  # the highest source of any value


async def test_nested_values_merge_leaf_by_leaf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = prefix()
    toml = tmp_path / "config.toml"
    toml.write_text('greeting = "from toml"\n[db]\nhost = "db.toml"\npool = 3\n')
    monkeypatch.setenv(f"{env}DB__POOL", "9")
    monkeypatch.setenv(f"{env}TAGS", '["a", "b"]')
    sources = [File(toml), File(tmp_path / "missing.yaml"), Env(env)]
    async with Config(Settings, sources=sources) as config:
        assert config.value.db == DB(host="db.toml", pool=9)
        assert config.value.tags == ["a", "b"]
        assert config.source_of("db.pool") == f"env:{env}"
        assert config.source_of("db.host") == f"toml:{toml}"
        assert config.source_of("db.password") == DEFAULTS
        assert config.source_of("db") == f"env:{env}"
        assert config.source_of("greeting") == f"toml:{toml}"
        assert config.source_of("tags") == f"env:{env}"
        with pytest.raises(ValueError, match=r"no setting 'db\.nope'"):
            config.source_of("db.nope")


async def test_a_field_set_whole_replaces_what_lower_sources_set_inside_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = prefix()
    monkeypatch.setenv(f"{env}DB", '{"host": "db.env"}')
    lower = Values({"db": {"host": "db.values", "pool": 7}}, name="values")
    async with Config(Settings, sources=[lower, Env(env)]) as config:
        # The environment's JSON document merges into db: pool stays from the lower source.
        assert config.value.db.host == "db.env"
        assert config.value.db.pool == 7
        assert config.source_of("db.pool") == "values"
    override = Values({"db": "not a mapping"}, name="top")
    with pytest.raises(ConfigError, match=r"db: Input should be a valid dictionary.*\(from top\)"):
        await Config(Settings, sources=[lower, override]).start()


async def test_a_changed_file_is_in_force_within_a_second(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("greeting: first\ndb:\n  pool: 2\n")
    async with Config(Settings, sources=[File(path)]) as config:
        assert config.value.greeting == "first"
        changes = config.watch("db.pool")
        began = time.monotonic()
        replace(path, "greeting: second\ndb:\n  pool: 4\n")
        change = await asyncio.wait_for(anext(changes), 1.0)
        elapsed = time.monotonic() - began
        assert change == Change("db.pool", 2, 4, f"yaml:{path}", ("db.pool",))
        assert config.value.db.pool == 4
        assert config.value.greeting == "second"
        assert elapsed < 1.0


async def test_a_file_that_appears_later_is_picked_up(tmp_path: Path) -> None:
    path = tmp_path / "late.json"
    async with Config(Settings, sources=[File(path)]) as config:
        assert config.source_of("greeting") == DEFAULTS
        changes = config.watch("greeting")
        replace(path, '{"greeting": "late"}')
        change = await asyncio.wait_for(anext(changes), 1.0)
        assert (change.old, change.new, change.source) == ("hi", "late", f"json:{path}")
        path.unlink()  # falls back to the default
        change = await asyncio.wait_for(anext(changes), 1.0)
        assert (change.old, change.new, change.source) == ("late", "hi", DEFAULTS)


async def test_an_invalid_change_is_rejected_and_the_old_config_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.toml"
    path.write_text('greeting = "good"\n[db]\npool = 3\n')
    async with Config(Settings, sources=[File(path)]) as config:
        before = config.value
        changes = config.watch()
        with caplog.at_level(logging.WARNING, logger="asgi_micro.config.config"):
            # Valid TOML, wrong for the model: pool must be >= 1; the greeting in the same
            # file must not slip in either.
            replace(path, 'greeting = "half"\n[db]\npool = 0\npassword = "hunter2-in-the-file"\n')
            await until(lambda: "rejected" in caplog.text, "the rejection logged", timeout=2)
            replace(path, 'greeting = "broken\npassword = "hunter2-in-the-file"\n')
            await until(lambda: "invalid TOML" in caplog.text, "the parse error logged", 2)
        assert config.value is before
        assert config.value.greeting == "good"
        assert config.value.db.pool == 3
        assert f"db.pool: Input should be greater than or equal to 1 (from toml:{path})" in (
            caplog.text
        )
        assert "hunter2" not in caplog.text
        assert changes._queue.empty()
        replace(path, 'greeting = "fixed"\n')
        change = await asyncio.wait_for(anext(changes), 1.0)
        assert change.paths == ("db.pool", "greeting")
        assert config.value.greeting == "fixed"


async def test_a_yaml_error_is_logged_without_the_line_it_is_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("greeting: ok\n")
    async with Config(Settings, sources=[File(path)]) as config:
        with caplog.at_level(logging.WARNING, logger="asgi_micro.config.config"):
            replace(path, "db:\n  password: [s3cr3t-yaml\n")
            await until(lambda: "invalid YAML" in caplog.text, "the YAML error logged", 2)
        assert "s3cr3t" not in caplog.text
        assert config.value.greeting == "ok"


async def test_start_fails_on_an_invalid_config(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"db": {"pool": "many"}}')
    config = Config(Settings, sources=[File(path)])
    with pytest.raises(ConfigError, match=r"db\.pool: Input should be a valid integer"):
        await config.start()
    with pytest.raises(RuntimeError, match="not loaded"):
        _ = config.value


async def test_on_change_calls_sync_and_async_callbacks(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('greeting = "one"\n')
    config = Config(Settings, sources=[File(path)])
    seen_sync: list[Change] = []
    seen_async: list[Change] = []

    async def on_greeting(change: Change) -> None:
        await asyncio.sleep(0)
        seen_async.append(change)

    config.on_change(seen_sync.append)  # registered before start: runs once started
    config.on_change(on_greeting, "greeting")
    unsubscribe = config.on_change(lambda change: 1 / 0)  # a failing callback is only logged
    async with config:
        replace(path, 'greeting = "two"\n')
        await until(lambda: seen_sync and seen_async, "both callbacks called", timeout=1)
        assert seen_sync[0].path == ""
        assert seen_sync[0].new is config.value
        assert seen_sync[0].old.greeting == "one"
        assert seen_async == [Change("greeting", "one", "two", f"toml:{path}", ("greeting",))]
        unsubscribe()
        replace(path, 'greeting = "three"\n[db]\npool = 8\n')
        await until(lambda: len(seen_sync) == 2, "the second change", timeout=1)
        await until(lambda: len(seen_async) == 2, "the second greeting", timeout=1)
        assert seen_sync[1].paths == ("db.pool", "greeting")


async def test_watch_ends_when_the_config_stops(tmp_path: Path) -> None:
    config = Config(Settings, sources=[Values({})])
    await config.start()
    await config.start()  # idempotent
    changes = config.watch("db")
    with pytest.raises(ValueError, match="no setting 'nope'"):
        config.watch("nope")

    async def drain() -> list[Change]:
        return [change async for change in changes]

    task = asyncio.create_task(drain())
    await config.stop()
    await config.stop()
    assert await asyncio.wait_for(task, 1.0) == []
    assert config.value == Settings()  # the last config stays readable


async def test_settings_mark_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    env = prefix()
    monkeypatch.setenv(f"{env}DB__PASSWORD", "pw-from-env")
    monkeypatch.setenv(f"{env}API_TOKEN", "tok-from-env")
    async with Config(Settings, sources=[Env(env)]) as config:
        settings = {s.path: s for s in config.settings()}
        assert list(settings) == [
            "db.host",
            "db.pool",
            "db.password",
            "greeting",
            "api_token",
            "tags",
        ]
        assert settings["db.password"].secret
        assert settings["db.password"].value == SecretStr("pw-from-env")
        assert settings["api_token"].secret  # by its name
        assert not settings["greeting"].secret
        assert settings["api_token"].source == f"env:{env}"


async def test_changes_are_logged_with_secrets_masked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dotenv = tmp_path / ".env"
    env = prefix()
    dotenv.write_text(f"{env}API_TOKEN=first-token\n")
    async with Config(Settings, sources=[DotEnv(dotenv, prefix=env)]) as config:
        with caplog.at_level(logging.INFO, logger="asgi_micro.config.config"):
            replace(dotenv, f"{env}API_TOKEN=second-token\n{env}GREETING=hello\n")
            await until(lambda: config.value.greeting == "hello", "the .env change", 1)
        assert config.value.api_token == "second-token"
        assert "first-token" not in caplog.text
        assert "second-token" not in caplog.text
        assert f"config api_token: '{MASK}' -> '{MASK}' (dotenv:{dotenv})" in caplog.text
        assert "config greeting: 'hi' -> 'hello'" in caplog.text


def test_sources_need_distinct_names_and_known_suffixes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="two config sources"):
        Config(Settings, sources=[File(tmp_path / "a.toml"), File(tmp_path / "a.toml")])
    with pytest.raises(ValueError, match=r"\.toml, \.yaml, \.yml or \.json"):
        File(tmp_path / "config.ini")
    with pytest.raises(TypeError, match="pydantic model class"):
        Config(dict, sources=[])  # type: ignore[type-var]
