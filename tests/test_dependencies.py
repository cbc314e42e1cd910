"""Every dependency the distribution declares is used by the library: a package nothing
imports (or names, as SQLAlchemy's drivers are named in URLs) does not belong in it."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
SOURCE = "\n".join(
    path.read_text(encoding="utf-8")
    for package in ("asgi_micro", "integrations")
    for path in sorted((ROOT / package).rglob("*.py"))
)


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _declared() -> list[str]:
    names = [_name(requirement) for requirement in PROJECT["dependencies"]]
    for extra in PROJECT.get("optional-dependencies", {}).values():
        names += [_name(r) for r in extra if not _name(r).startswith("asgi-micro")]
    return sorted(set(names))


def _modules(distribution: str) -> set[str]:
    return {
        module
        for module, distributions in packages_distributions().items()
        if any(d.lower().replace("_", "-") == distribution for d in distributions)
        and not module.startswith("_")
    }


@pytest.mark.parametrize("distribution", _declared())
def test_every_declared_dependency_is_used(distribution: str) -> None:
    modules = _modules(distribution)
    assert modules, f"{distribution} is declared but not installed"
    used = [m for m in modules if re.search(rf"(import|from) {m}\b|\b{m}[:\"]", SOURCE)]
    assert used, f"{distribution} ({', '.join(sorted(modules))}) is declared; nothing uses it"
