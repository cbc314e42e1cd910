"""``asgi-micro new``: each template makes a project whose own tests pass in this environment,
whose code ruff finds clean and whose compose file validates; names and directories it
refuses, in one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
from typer.testing import CliRunner

from asgi_micro.cli import app
from asgi_micro.cli.new import Template, render_project
from tests.helpers import IN_CI

runner = CliRunner()


def new(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["new", *args])
    return result.exit_code, result.stdout, result.stderr


def compose_command() -> list[str]:
    """``docker-compose``, else the ``docker compose`` plugin; a skip without either, and a
    failure under ``CI=true``."""
    if shutil.which("docker-compose") is not None:
        return ["docker-compose"]
    if shutil.which("docker") is not None:
        version = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if version.returncode == 0:
            return ["docker", "compose"]
    message = "neither docker-compose nor the docker compose plugin is installed"
    if IN_CI:
        pytest.fail(f"{message}; .ci/run must install docker-compose", pytrace=False)
    pytest.skip(message)


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``command`` in the project, with this environment minus the tests' ``MICRO_*`` (the
    project's tests must not need them) and the project on the import path."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MICRO_")}
    env["PYTHONPATH"] = str(cwd)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


@pytest.mark.slow
@pytest.mark.parametrize("template", list(Template))
def test_a_new_project_passes_its_own_tests(
    template: Template, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = new("demo", "--template", template)
    assert code == 0, stderr
    project = tmp_path / "demo"
    assert "cd demo" in stdout
    assert "uv run asgi-micro run demo/app.py" in stdout
    for relative in ("demo/app.py", "demo/models.py", "tests/test_app.py", "README.md"):
        assert (project / relative).is_file(), relative
    assert 'Service("demo"' in (project / "demo" / "app.py").read_text()
    assert '"asgi-micro>=' in (project / "pyproject.toml").read_text()

    tested = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], project)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert " passed" in tested.stdout
    assert "skipped" not in tested.stdout

    linted = run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], project)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    formatted = run([sys.executable, "-m", "ruff", "format", "--check", "--no-cache", "."], project)
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr

    checked = run([*compose_command(), "-f", "compose.yaml", "config", "--quiet"], project)
    assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize("template", list(Template))
def test_a_long_dashed_name_renders_clean_code(template: Template, tmp_path: Path) -> None:
    """Names go into code: a long one with dashes still makes lines ruff finds clean."""
    directory = tmp_path / "project"
    code, stdout, stderr = new(
        "inventory-reservations-eu", "--template", template, "--directory", str(directory)
    )
    assert code == 0, stderr
    assert f"cd {directory}" in stdout
    app_file = directory / "inventory_reservations_eu" / "app.py"
    assert 'Service("inventory-reservations-eu"' in app_file.read_text()
    assert 'MicroRouter("InventoryReservationsEu")' in app_file.read_text()
    linted = run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], directory)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    formatted = run(
        [sys.executable, "-m", "ruff", "format", "--check", "--no-cache", "."], directory
    )
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr


def test_the_compose_entry_follows_the_repositorys_conventions() -> None:
    rendered = render_project("Demo-1", Template.rpc)
    compose = rendered[PurePosixPath("compose.yaml")]
    assert "  Demo-1:\n    build: .\n    image: demo-1\n" in compose  # image names are lowercase
    assert "command: [asgi-micro, run, Demo_1/app.py, --host, 0.0.0.0" in compose
    assert "MICRO_REGISTRY: ${MICRO_REGISTRY:-mdns://}" in compose
    assert "/_micro/health" in compose
    dockerfile = rendered[PurePosixPath("Dockerfile")]
    assert 'CMD ["asgi-micro", "run", "Demo_1/app.py"' in dockerfile


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("a.b", "a service name is letters, digits, '_' and '-'"),
        ("1st", "a service name is letters, digits, '_' and '-'"),
        ("_x", "a service name is letters, digits, '_' and '-'"),
        ("has space", "a service name is letters, digits, '_' and '-'"),
        ("class", "'class' is a Python keyword"),
        ("json", "the package 'json' would shadow a module of that name"),
        ("fastapi", "the package 'fastapi' would shadow a module of that name"),
    ],
)
def test_a_name_that_makes_no_package_of_its_own_is_refused(
    name: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = new(name)
    assert code == 2
    assert stderr.startswith(f"asgi-micro new: {message}")
    assert stderr.count("\n") == 1
    assert stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_a_non_empty_directory_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    code, _, stderr = new("demo", "--directory", str(tmp_path))
    assert code == 2
    assert stderr == f"asgi-micro new: {tmp_path} is not empty; choose a new --directory\n"
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]


def test_a_file_in_the_way_is_refused(tmp_path: Path) -> None:
    (tmp_path / "demo").write_text("mine")
    code, _, stderr = new("demo", "--directory", str(tmp_path / "demo"))
    assert code == 2
    assert stderr == f"asgi-micro new: {tmp_path / 'demo'} is a file; choose a new --directory\n"


def test_an_empty_directory_is_used(tmp_path: Path) -> None:
    code, _, stderr = new("my-svc", "--template", "events", "--directory", str(tmp_path))
    assert code == 0, stderr
    assert (tmp_path / "my_svc" / "app.py").is_file()
    assert (tmp_path / ".dockerignore").read_text().startswith(".micro/")
    pyproject = (tmp_path / "pyproject.toml").read_text()
    assert 'name = "my-svc"' in pyproject
    assert 'packages = ["my_svc"]' in pyproject


def test_an_unknown_template_is_a_usage_error(tmp_path: Path) -> None:
    code, _, stderr = new("demo", "--template", "grpc", "--directory", str(tmp_path))
    assert code == 2
    assert "Invalid value for '--template'" in stderr
    assert "'grpc' is not one of 'rpc'" in stderr
    assert list(tmp_path.iterdir()) == []


def test_every_template_renders_every_placeholder() -> None:
    """``string.Template.substitute`` raises on a placeholder it has no value for; what is
    left of ``$`` is the compose file's own ``${VAR:-default}``."""
    for template in Template:
        rendered = render_project("demo", template)
        assert {path.name for path in rendered} >= {
            "app.py",
            "models.py",
            "conftest.py",
            "test_app.py",
            "README.md",
            "pyproject.toml",
            "compose.yaml",
            "Dockerfile",
        }
        for path, text in rendered.items():
            assert "$" not in text.replace("${MICRO_", ""), path
