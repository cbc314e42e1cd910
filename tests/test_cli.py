"""The ``asgi-micro`` command: finding the app to run, argument errors, empty registries, and
``run`` in processes of its own (``module:attr``, ``python -m asgi_micro``, ``--reload``).

The commands against running services are in ``test_examples.py``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path

import httpx
import orjson
import pytest
import typer
from typer.testing import CliRunner

from asgi_micro.cli import app, import_app, locate_app
from tests.helpers import eventually, free_port
from tests.processes import ROOT, asgi_micro, serving

runner = CliRunner()

GREETER_FILE = ROOT / "example_apps" / "greeter" / "app.py"


@pytest.fixture(autouse=True)
def in_the_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative paths are the ones a user types at the root of a clone."""
    monkeypatch.chdir(ROOT)


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


# -- finding the app --------------------------------------------------------------------------


def test_a_file_inside_packages_is_imported_by_its_dotted_path() -> None:
    assert locate_app("example_apps/greeter/app.py") == ("example_apps.greeter.app:app", str(ROOT))
    assert locate_app(f"{GREETER_FILE}:service") == ("example_apps.greeter.app:service", str(ROOT))


def test_a_plain_file_is_imported_from_its_directory(tmp_path: Path) -> None:
    (tmp_path / "api.py").write_text("app = object()\n")
    assert locate_app(str(tmp_path / "api.py")) == ("api:app", str(tmp_path))
    assert locate_app(f"{tmp_path / 'api.py'}:other") == ("api:other", str(tmp_path))


def test_module_and_attribute_are_taken_as_they_are() -> None:
    assert locate_app("example_apps.greeter.app:app") == ("example_apps.greeter.app:app", ".")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("missing.py", "no such file: missing.py"),
        ("missing.py:app", "no such file: missing.py"),
        ("example_apps/greeter", "example_apps/greeter is a directory"),
        ("example_apps.greeter.app", "expected module:attr or a path to a .py file"),
    ],
)
def test_an_app_that_cannot_be_found_is_a_usage_error(target: str, message: str) -> None:
    with pytest.raises(typer.BadParameter, match=message):
        locate_app(target)
    code, _, stderr = invoke("run", target)  # refused before uvicorn starts
    assert code == 2
    assert message in stderr


def test_import_app_returns_the_object(tmp_path: Path) -> None:
    module = f"cli_app_{uuid.uuid4().hex}"
    (tmp_path / f"{module}.py").write_text("app = ['the app']\nother = 'x'\n")
    try:
        assert import_app(str(tmp_path / f"{module}.py")) == ["the app"]
        assert import_app(f"{tmp_path / module}.py:other") == "x"
        with pytest.raises(typer.BadParameter, match=f"{module} has no attribute 'nope'"):
            import_app(f"{tmp_path / module}.py:nope")
    finally:
        sys.modules.pop(module, None)
    assert str(tmp_path) not in sys.path


# -- registries and arguments -----------------------------------------------------------------


def test_an_empty_registry() -> None:
    assert invoke("services", "--registry", "memory://") == (0, "no services found\n", "")
    code, stdout, _ = invoke("services", "--registry", "memory://", "--json")
    assert (code, orjson.loads(stdout)) == (0, [])
    for command in ("describe", "health"):
        code, stdout, stderr = invoke(command, "greeter", "--registry", "memory://")
        assert (code, stdout) == (1, "")
        assert "service 'greeter' not found" in stderr


def test_calling_a_service_that_is_not_there_prints_the_error_shape() -> None:
    code, stdout, stderr = invoke(
        "call", "greeter", "Greeter.Hello", '{"name": "Ada"}', "--registry", "memory://"
    )
    assert (code, stdout) == (1, "")
    error = orjson.loads(stderr)
    assert set(error) == {"id", "code", "detail", "status"}
    assert (error["code"], error["status"]) == (503, "Service Unavailable")
    assert "greeter" in error["detail"]


def test_a_registry_url_with_an_unknown_scheme() -> None:
    code, _, stderr = invoke("services", "--registry", "etcetera://")
    assert code == 2
    assert "unknown registry scheme 'etcetera'" in stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{not json"], "the request is not valid JSON"),
        (["{}", "-m", "tenant"], "expected key=value, got 'tenant'"),
        (["{}", "-m", "=acme"], "expected key=value, got '=acme'"),
    ],
)
def test_call_arguments_are_checked_before_calling(args: list[str], message: str) -> None:
    code, stdout, stderr = invoke(
        "call", "greeter", "Greeter.Hello", *args, "--registry", "memory://"
    )
    assert (code, stdout) == (2, "")
    assert message in stderr


# -- run, in processes of its own -------------------------------------------------------------


RELOADABLE = """
import os

from fastapi import FastAPI

from asgi_micro import Service

service = Service("reloadable")
app = FastAPI(lifespan=service.lifespan)


@app.get("/version")
async def version() -> dict[str, str]:
    return {"version": VERSION, "pid": str(os.getpid())}
"""


@pytest.mark.slow
async def test_run_module_attr_with_python_m() -> None:
    python_m = (sys.executable, "-m", "asgi_micro")
    async with (
        serving("example_apps.greeter.app:app", command=python_m) as [server],
        httpx.AsyncClient(trust_env=False) as http,
    ):
        reply = await http.post(f"{server.url}/greeter/hello", json={"name": "Ada"})
        assert reply.json() == {"message": "Hello Ada"}
        # `run` told the service where it serves.
        record = (await http.get(f"{server.url}/_micro/registry")).json()
        assert [node["address"] for node in record["nodes"]] == [server.address]


@pytest.mark.slow
async def test_run_with_reload_serves_and_restarts_on_a_change(tmp_path: Path) -> None:
    # In a directory of its own: the reloader watches the working directory.
    source = tmp_path / "reloadable.py"
    source.write_text('VERSION = "1"\n' + RELOADABLE)
    async with (
        serving("reloadable:app", args=["--reload"], cwd=tmp_path) as [server],
        httpx.AsyncClient(base_url=server.url, trust_env=False) as http,
    ):
        first = (await http.get("/version")).json()
        assert first["version"] == "1"
        record = (await http.get("/_micro/registry")).json()
        assert [node["address"] for node in record["nodes"]] == [server.address]
        source.write_text('VERSION = "2"\n' + RELOADABLE)

        async def reloaded() -> dict[str, str]:
            try:
                reply: dict[str, str] = (await http.get("/version", timeout=1.0)).json()
            except (httpx.TransportError, ValueError):
                return {}  # between workers
            return reply if reply["version"] == "2" else {}

        second = await eventually(reloaded, timeout=20, interval=0.2, message="the new code")
        assert second["pid"] != first["pid"]
        supervisor = server.pid

    async def group_gone() -> bool:
        try:
            os.killpg(supervisor, 0)
        except ProcessLookupError:
            return True
        return False

    # The reloader's worker went with it: nothing is left in its process group.
    await eventually(group_gone, timeout=10, message="the --reload worker exits")


@pytest.mark.slow
async def test_run_an_app_that_does_not_import() -> None:
    no_module, no_attribute = await asyncio.gather(
        asgi_micro("run", "no_such_module:app", "--port", str(free_port())),
        asgi_micro("run", "example_apps.greeter.app:nope", "--port", str(free_port())),
    )
    assert (no_module.returncode, no_module.stderr) == (
        2,
        "asgi-micro run: no module named 'no_such_module'\n",
    ), no_module
    assert no_attribute.returncode != 0, no_attribute
    message = 'Attribute "nope" not found in module "example_apps.greeter.app"'
    assert message in no_attribute.stderr, no_attribute


# -- polish a new user sees -------------------------------------------------------------------


def test_version() -> None:
    from asgi_micro.__about__ import __version__

    assert invoke("--version") == (0, f"asgi-micro {__version__}\n", "")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("nope.module:app", "asgi-micro run: no module named 'nope.module'\n"),
        ("missing.py", "asgi-micro run: no such file: missing.py\n"),
    ],
)
def test_run_refuses_an_app_that_is_not_there_in_one_line(target: str, message: str) -> None:
    assert invoke("run", target) == (2, "", message)


def test_a_stream_of_requests_must_be_json_lines_on_stdin() -> None:
    result = runner.invoke(
        app, ["call", "greeter", "Greeter.Chat", "-", "--registry", "memory://"], input="{\n"
    )
    assert (result.exit_code, result.stdout) == (2, "")
    assert "stdin is not valid JSON" in result.stderr
