"""``asgi-micro store``: the store from a shell, on a SQLite file."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from asgi_micro.cli.store import app

runner = CliRunner()


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cli.db'}"


def run(
    *args: str, input: bytes | None = None, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), input=input, env=env)
    return result.exit_code, result.stdout, result.stderr


def test_write_read_list_delete(url: str) -> None:
    code, out, _ = run("write", "user/1", "Ada", "--store", url, "-m", "team=core")
    assert (code, out.strip()) == (0, "wrote 'user/1' at version 1")
    run("write", "user/2", "Grace", "--store", url)
    run("write", "other", "x", "--store", url)

    code, out, _ = run("read", "user/1", "--store", url, "--json")
    [record] = orjson.loads(out)
    assert record == {
        "key": "user/1",
        "value": "Ada",
        "encoding": "utf-8",
        "metadata": {"team": "core"},
        "version": 1,
        "expires_at": None,
    }
    code, out, _ = run("read", "user/", "--prefix", "--store", url, "--json")
    assert [r["key"] for r in orjson.loads(out)] == ["user/1", "user/2"]
    code, out, _ = run("list", "--store", url)
    assert out.split() == ["other", "user/1", "user/2"]
    code, out, _ = run("list", "--prefix", "user/", "--limit", "1", "--offset", "1", "--store", url)
    assert out.split() == ["user/2"]
    code, out, _ = run("list", "--suffix", "/1", "--store", url, "--json")
    assert orjson.loads(out) == ["user/1"]

    code, out, _ = run("delete", "user/1", "--store", url)
    assert (code, out.strip()) == (0, "deleted 'user/1'")
    code, out, _ = run("delete", "user/1", "--store", url, "--json")
    assert (code, orjson.loads(out)) == (0, {"key": "user/1", "deleted": False})


def test_human_output_is_a_table(url: str) -> None:
    run("write", "k", "[bold]not markup[/bold]", "--store", url, "--ttl", "60")
    run("write", "bin", "-", "--store", url, input=b"\xff\xfe")

    code, out, _ = run("read", "", "--prefix", "--store", url)
    assert code == 0
    assert "[bold]not markup[/bold]" in out
    assert "<2 bytes>" in out
    assert "expires in" in out
    assert re.search(r"\b\d+\.\ds\b", out)


def test_binary_values_from_stdin(url: str) -> None:
    code, out, _ = run("write", "bin", "-", "--store", url, "--json", input=b"\x00\xff\x10")
    assert code == 0
    assert orjson.loads(out)["version"] == 1

    code, out, _ = run("read", "bin", "--store", url, "--json")
    [record] = orjson.loads(out)
    assert record["encoding"] == "base64"
    assert base64.b64decode(record["value"]) == b"\x00\xff\x10"


def test_namespaces_ttl_and_if_version(url: str) -> None:
    options = ["--store", url, "--database", "shop", "--table", "carts"]
    code, out, _ = run("write", "cart", "1", "--ttl", "30", "--if-version", "0", "--json", *options)
    record = orjson.loads(out)
    assert code == 0
    assert record["version"] == 1
    assert record["expires_at"] is not None

    code, _, err = run("write", "cart", "2", "--if-version", "0", *options)
    assert code == 1
    assert "409 Conflict" in err
    assert "expected no record, found version 1" in err
    code, _, err = run("write", "cart", "2", "--if-version", "1", *options)
    assert code == 0
    code, _, err = run("delete", "cart", "--if-version", "1", "--json", *options)
    assert code == 1
    assert orjson.loads(err)["code"] == 409

    code, out, _ = run("list", "--store", url)
    assert out.split() == []  # another namespace
    code, out, _ = run("list", *options)
    assert out.split() == ["cart"]


def test_errors(url: str) -> None:
    code, _, err = run("read", "missing", "--store", url)
    assert code == 1
    assert "404 Not Found" in err
    assert "'missing'" in err
    code, _, err = run("write", "", "v", "--store", url)
    assert code == 1
    assert "must not be empty" in err
    code, _, err = run("write", "k", "v", "--ttl", "-5", "--store", url)
    assert code == 1
    assert "ttl must be positive" in err
    code, _, err = run("write", "k", "v", "--metadata", "novalue", "--store", url)
    assert code == 2
    assert "key=value" in err
    code, _, err = run("list", "--store", "nosuch://x")
    assert code == 2
    assert "unknown store scheme" in err
    code, out, _ = run("list", "--store", url)
    assert out.split() == []  # nothing was half-written


def test_store_from_environment_and_default(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, _ = run("write", "k", "from env", env={"MICRO_STORE": url})
    assert code == 0
    code, out, _ = run("read", "k", "--json", "--store", url)
    assert orjson.loads(out)[0]["value"] == "from env"

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MICRO_STORE", raising=False)
    code, _, _ = run("write", "k", "embedded")
    assert code == 0
    assert (tmp_path / ".micro" / "store.db").is_file()
