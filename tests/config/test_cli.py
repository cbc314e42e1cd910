"""``asgi-micro config show|get|set``, run as the console script in a directory of its own with
``MICRO_STORE`` on a SQLite file there."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import orjson
import pytest

from asgi_micro.config import MASK, Config, StoreSource
from asgi_micro.store.sql import SQLStore
from tests.config.models import Settings
from tests.processes import ASGI_MICRO

pytestmark = pytest.mark.slow  # each command is a new process

MODEL = """
from pydantic import BaseModel, SecretStr


class DB(BaseModel):
    host: str = "localhost"
    pool: int = 5
    password: SecretStr = SecretStr("default-password")


class Settings(BaseModel):
    db: DB = DB()
    greeting: str = "hi"
    api_token: str = ""
    tags: list[str] = []
"""


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "settings.py").write_text(MODEL)
    (tmp_path / "config.toml").write_text('greeting = "from toml"\n[db]\npool = 3\n')
    (tmp_path / ".env").write_text("MICRO_CONFIG_DB__PASSWORD=pw-from-dotenv\n")
    return tmp_path


def config(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("MICRO_") and name != "PYTHONPATH"
    }
    env["MICRO_STORE"] = f"sqlite:///{workdir / 'store.db'}"
    env["MICRO_CONFIG_API_TOKEN"] = "token-from-env"
    env["COLUMNS"] = "300"  # the table's paths on one line
    return subprocess.run(
        [*ASGI_MICRO, "config", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def stored(workdir: Path) -> dict[str, bytes]:
    async with SQLStore.from_url(f"sqlite:///{workdir / 'store.db'}") as store:
        return {record.key: record.value for record in await store.read("", prefix=True)}


def test_set_then_show_every_value_with_its_source(workdir: Path) -> None:
    done = config(workdir, "set", "db.pool", "12")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "set db.pool (record 'config/db.pool' at version 1)"
    done = config(workdir, "set", "tags", '["a", "b"]', "--json")
    assert orjson.loads(done.stdout) == {"path": "tags", "key": "config/tags", "version": 1}
    assert asyncio.run(stored(workdir)) == {"config/db.pool": b"12", "config/tags": b'["a","b"]'}

    done = config(workdir, "show", "--model", "settings:Settings", "-f", "config.toml", "--json")
    assert done.returncode == 0, done.stderr
    store = "store:micro/micro/config/"
    assert orjson.loads(done.stdout) == {
        "db.host": {"value": "localhost", "source": "defaults"},
        "db.pool": {"value": 12, "source": store},
        "db.password": {"value": MASK, "source": f"dotenv:{workdir / '.env'}"},
        "greeting": {"value": "from toml", "source": f"toml:{workdir / 'config.toml'}"},
        "api_token": {"value": MASK, "source": "env:MICRO_CONFIG_"},
        "tags": {"value": ["a", "b"], "source": store},
    }
    assert "pw-from-dotenv" not in done.stdout
    assert "token-from-env" not in done.stdout

    done = config(workdir, "show", "--model", "settings:Settings", "-f", "config.toml")
    assert done.returncode == 0, done.stderr
    rows = [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in done.stdout.splitlines()
        if line.startswith("│")
    ]
    assert rows[2:4] == [
        ["db.password", MASK, f"dotenv:{workdir / '.env'}"],
        ["greeting", "from toml", f"toml:{workdir / 'config.toml'}"],
    ]


def test_get_prints_the_value_in_force(workdir: Path) -> None:
    model = ("--model", "settings:Settings", "--file", "config.toml")
    assert config(workdir, "get", "greeting", *model).stdout == "from toml\n"
    done = config(workdir, "get", "db", *model, "--json")
    assert orjson.loads(done.stdout) == {
        "path": "db",
        "value": {"host": "localhost", "pool": 3, "password": MASK},
        "source": f"dotenv:{workdir / '.env'}",  # the highest source inside db
    }
    assert config(workdir, "get", "db.password", *model, "--reveal").stdout == "pw-from-dotenv\n"
    done = config(workdir, "get", "db.nope", *model)
    assert (done.returncode, done.stderr.strip()) == (1, "no config value at 'db.nope'")


def test_set_with_a_model_validates_before_writing(workdir: Path) -> None:
    done = config(workdir, "set", "db.pool", "many", "--model", "settings:Settings")
    assert done.returncode == 1
    assert "db.pool: Input should be a valid integer" in done.stderr
    done = config(workdir, "set", "greeting", "hello there", "--model", "settings:Settings")
    assert done.returncode == 0, done.stderr
    assert asyncio.run(stored(workdir)) == {"config/greeting": b'"hello there"'}


def test_bad_arguments_exit_2(workdir: Path) -> None:
    done = config(workdir, "show", "--model", "settings")
    assert (done.returncode, done.stderr.strip()) == (
        2,
        "--model takes module:Class, got 'settings'",
    )
    done = config(workdir, "set", "db..pool", "1")
    assert done.returncode == 2
    assert "dotted names" in done.stderr


async def test_a_running_config_sees_what_the_cli_sets(workdir: Path) -> None:
    store = SQLStore.from_url(f"sqlite:///{workdir / 'store.db'}")
    async with store, Config(Settings, sources=[StoreSource(store)]) as running:
        changes = running.watch("greeting")
        done = await asyncio.to_thread(config, workdir, "set", "greeting", "from the cli")
        assert done.returncode == 0, done.stderr
        change = await asyncio.wait_for(anext(changes), 1.0)
        assert change.new == "from the cli"
        assert running.value.greeting == "from the cli"
