"""``asgi-micro doctor``: every part built from its URL, started and made to do one real thing,
against the embedded defaults and the real servers on this machine."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
from redis.asyncio import Redis
from typer.testing import CliRunner

from asgi_micro.cli import app
from asgi_micro.cli.doctor import redacted
from tests.helpers import free_port, mdns_domain, require_server

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(autouse=True)
def embedded_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The defaults a user gets in an empty directory (the registry stays in the test's mDNS
    domain, on loopback)."""
    for part in ("STORE", "DATABASE", "BROKER", "SYNC", "AUTH"):
        monkeypatch.delenv(f"MICRO_{part}", raising=False)
    monkeypatch.chdir(tmp_path)


def doctor(*args: str) -> tuple[int, dict[str, Any], dict[str, dict[str, Any]]]:
    """Exit code, the JSON report, and its parts by name."""
    result = runner.invoke(app, ["doctor", "--json", *args])
    report = orjson.loads(result.stdout)
    return result.exit_code, report, {part["part"]: part for part in report["parts"]}


def test_the_embedded_defaults_are_all_reached(tmp_path: Path) -> None:
    code, report, parts = doctor()
    assert code == 0, report
    assert report["reached"] is True
    assert list(parts) == ["registry", "store", "sync", "broker", "database", "auth"]
    assert parts["registry"]["url"] == f"mdns://?domain={mdns_domain()}"
    assert "multicast joined on 127.0.0.1" in parts["registry"]["result"]
    assert "loopback only" in parts["registry"]["advice"]
    assert parts["store"]["url"] == "sqlite:///.micro/store.db"
    assert parts["store"]["result"] == "wrote, read and deleted a record"
    assert parts["sync"]["result"].startswith("acquired and released a lock")
    assert "memory:// lives in one process" in parts["sync"]["advice"]
    assert parts["database"]["result"] == "connected (SELECT 1)"
    assert all(part["seconds"] >= 0 for part in parts.values())
    assert (tmp_path / ".micro" / "store.db").exists()  # the store a service here would use


def test_the_table_names_every_part_and_says_all_were_reached() -> None:
    result = runner.invoke(app, ["doctor"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.stdout
    for part in ("registry", "store", "sync", "broker", "database", "auth"):
        assert part in result.stdout
    assert "every part was reached" in result.stdout


def test_an_unreachable_store_exits_1_naming_it_without_its_password() -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql://postgres:hunter2@127.0.0.1:{port}/x"
    code, report, parts = doctor("--store", url, "--sync", "memory://", "--timeout", "10")
    assert code == 1
    assert report["reached"] is False
    store = parts["store"]
    assert store["reached"] is False
    assert store["url"] == f"postgresql://postgres:***@127.0.0.1:{port}/x"
    assert f"127.0.0.1:{port}" in store["result"]
    assert f"is the postgresql server running at 127.0.0.1:{port}?" in store["advice"]
    assert "hunter2" not in orjson.dumps(report).decode()
    assert parts["registry"]["reached"]  # the others go on
    assert parts["database"]["reached"]


def test_the_table_says_what_was_not_reached() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/x"
    result = runner.invoke(app, ["doctor", "--store", url], env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert "not reached: store" in result.stdout
    assert url in result.stdout


def test_a_bad_url_is_reported_as_such() -> None:
    code, _, parts = doctor("--broker", "nosuch://x")
    assert code == 1
    assert parts["broker"]["result"].startswith("bad URL: unknown broker scheme 'nosuch'")
    assert parts["broker"]["advice"] == "fix MICRO_BROKER or --broker"


def test_an_mdns_interface_that_cannot_join_names_the_alternative() -> None:
    code, _, parts = doctor(
        "--registry", f"mdns://?interfaces=10.254.253.77&domain={mdns_domain()}"
    )
    assert code == 1
    registry = parts["registry"]
    assert "on interface 10.254.253.77" in registry["result"]
    assert "MICRO_REGISTRY=etcd://host:2379" in registry["advice"]


def test_the_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICRO_STORE", "memory://")
    monkeypatch.setenv("MICRO_BROKER", "memory://")
    code, _, parts = doctor("--round-trip")
    assert code == 0
    assert parts["store"]["url"] == "memory://"
    assert parts["broker"]["result"] == "published and received an event"


async def test_redis_and_nats_are_reached_with_a_round_trip() -> None:
    require_server("Redis", "127.0.0.1", 6379)
    require_server("NATS", "127.0.0.1", 4222)
    unique = f"doctor{uuid.uuid4().hex[:12]}"
    redis_broker = f"redis://127.0.0.1:6379/0?prefix={unique}"
    nats_broker = f"nats://127.0.0.1:4222?stream={unique}&prefix={unique}&max_age=60"
    sync = f"redis://127.0.0.1:6379/0?prefix={unique}"
    try:
        for broker in (redis_broker, nats_broker):
            result = await asyncio.to_thread(
                runner.invoke,
                app,
                ["doctor", "--json", "--broker", broker, "--sync", sync, "--round-trip"],
            )
            parts = {part["part"]: part for part in orjson.loads(result.stdout)["parts"]}
            assert result.exit_code == 0, parts
            assert parts["broker"]["result"] == "published and received an event"
            assert parts["sync"]["result"].startswith("acquired and released a lock")
    finally:
        redis = Redis(host="127.0.0.1", port=6379)
        keys = [key async for key in redis.scan_iter(f"{unique}:*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
        connection = await nats.connect("nats://127.0.0.1:4222")
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await connection.jetstream().delete_stream(unique)
        await connection.close()


def test_a_missing_extra_is_reported_with_its_install_line(tmp_path: Path) -> None:
    """As when asyncpg is not installed: in a process of its own, importing it fails as
    Python makes it fail for a module that is absent (nothing is uninstalled)."""
    script = "import sys; sys.modules['asyncpg'] = None\nfrom asgi_micro.cli import main; main()\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script, "doctor", "--json", "--store", "postgresql://h/db"],
        capture_output=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr.decode()
    assert b"Traceback" not in done.stderr
    parts = {part["part"]: part for part in orjson.loads(done.stdout)["parts"]}
    assert parts["store"]["result"].startswith("not installed:")
    assert parts["store"]["advice"] == "pip install 'asgi-micro[postgres]'"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:secret@db/x", "postgresql://u:***@db/x"),
        ("postgresql://u@db/x", "postgresql://u@db/x"),
        ("nats://tok@a:4222,u:pw@b:4222", "nats://***@a:4222,u:***@b:4222"),
        ("redis://:pw@h:6379/0?prefix=p", "redis://:***@h:6379/0?prefix=p"),
        ("jwt://?keys=/run/ring&api_key=k", "jwt://?keys=/run/ring&api_key=***"),
        ("mdns://?interfaces=127.0.0.1,10.0.0.2", "mdns://?interfaces=127.0.0.1,10.0.0.2"),
        ("sqlite:///.micro/store.db", "sqlite:///.micro/store.db"),
    ],
)
def test_urls_are_shown_without_credentials(url: str, shown: str) -> None:
    assert redacted(url) == shown
