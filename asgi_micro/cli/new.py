"""``asgi-micro new NAME``: a new service that starts right, from a template shipped here.

    asgi-micro new orders                      # ./orders/, the rpc template
    asgi-micro new orders --template events --directory services/orders

The project holds the package (``orders/app.py``: the ``Service``, a ``MicroRouter``, its
models), tests that run the app in an ``asgi_micro.testing.Cluster`` (in process, on in-memory
backends), a README, a ``pyproject.toml``, a ``Dockerfile`` and a ``compose.yaml``.

The templates are the files under ``asgi_micro/templates/``: ``common/`` for every project and
one folder per template, rendered with ``string.Template`` (``$$`` is a literal ``$``). In them
a ``.tmpl`` suffix is dropped, the folder ``package`` becomes the package's name,
``dockerignore`` becomes ``.dockerignore``, and a template's ``<key>.part`` files are the text
of ``$<key>`` in the common files.
"""

from __future__ import annotations

import enum
import importlib.util
import keyword
import string
import sys
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath
from typing import Annotated

import typer

from .. import broker, data, registry, store, sync
from ..__about__ import __version__
from ..naming import SERVICE_NAME, default_path, method_name
from .common import console, errors

__all__ = ["Template", "new", "render_project"]

_SUFFIX = ".tmpl"
_PART = ".part"


class Template(enum.StrEnum):
    """What the new service does to begin with."""

    rpc = "rpc"
    events = "events"
    crud = "crud"


def new(
    name: Annotated[str, typer.Argument(help="The service's name: letters, digits, '_' and '-'.")],
    template: Annotated[
        Template,
        typer.Option(
            help="rpc: a unary and a streaming endpoint; events: publish and subscribe; "
            "crud: create, read, update and delete over the store."
        ),
    ] = Template.rpc,
    directory: Annotated[
        Path | None,
        typer.Option(help="Where to create the project (new or empty); default: ./NAME."),
    ] = None,
) -> None:
    """Create a new service from a template: app, tests, README, pyproject, Dockerfile and
    compose file."""
    target = Path(name) if directory is None else directory
    try:
        package = package_name(name)
        check_empty(target)
        rendered = render_project(name, template)
    except ValueError as exc:
        errors.print(f"asgi-micro new: {exc}")
        raise typer.Exit(2) from None
    for relative, text in rendered.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    console.print(f"Created {target} from the {template} template: the service {name!r}.")
    console.print("Next steps:")
    console.print(f"  cd {target}")
    console.print("  uv run pytest                          # its tests, on in-memory parts")
    console.print(f"  uv run asgi-micro run {package}/app.py   # serve it on 127.0.0.1:8000")
    console.print("  README.md says how to call it, and how to ship it with compose.yaml.")


def package_name(name: str) -> str:
    """The Python package of service ``name`` (``-`` becomes ``_``); ``ValueError`` for a name
    that a Service refuses or that makes no importable package of its own."""
    package = name.replace("-", "_")
    if not SERVICE_NAME.fullmatch(name) or not package.isidentifier():
        raise ValueError(
            f"a service name is letters, digits, '_' and '-', starting with a letter, got {name!r}"
        )
    if keyword.iskeyword(package):
        raise ValueError(f"{package!r} is a Python keyword; choose another name")
    if package in sys.stdlib_module_names or _installed(package):
        raise ValueError(
            f"the package {package!r} would shadow a module of that name; choose another name"
        )
    return package


def _installed(package: str) -> bool:
    """Whether a module or package of that name is importable (not a mere folder of that name
    in the working directory: a namespace package)."""
    spec = importlib.util.find_spec(package)
    return spec is not None and spec.origin is not None


def check_empty(target: Path) -> None:
    """Refuse to write into anything but a new or empty directory."""
    if target.is_dir():
        if any(target.iterdir()):
            raise ValueError(f"{target} is not empty; choose a new --directory")
    elif target.exists():
        raise ValueError(f"{target} is a file; choose a new --directory")


def render_project(name: str, template: Template | str) -> dict[PurePosixPath, str]:
    """The files of a new project, by path relative to its directory, rendered."""
    package = package_name(name)
    router = method_name(package)
    values = {
        "name": name,
        "package": package,
        "router": router,
        "prefix": default_path(f"{router}.Method").rpartition("/")[0],
        "image": name.lower(),
        "template": str(template),
        "version": __version__,
        "registry_url": registry.DEFAULT_URL,
        "broker_url": broker.DEFAULT_URL,
        "store_url": store.DEFAULT_URL,
        "database_url": data.DEFAULT_URL,
        "sync_url": sync.DEFAULT_URL,
    }
    root = files("asgi_micro") / "templates"
    own = root / str(Template(template))
    for part in own.iterdir():
        if part.name.endswith(_PART):
            text = part.read_text(encoding="utf-8").strip()
            values[part.name.removesuffix(_PART)] = string.Template(text).substitute(values)
    rendered: dict[PurePosixPath, str] = {}
    for source in (root / "common", own):
        for relative, item in _files(source):
            path = PurePosixPath(*(_target_name(piece, package) for piece in relative.parts))
            rendered[path] = string.Template(item.read_text(encoding="utf-8")).substitute(values)
    return rendered


def _files(
    folder: Traversable, relative: PurePosixPath = PurePosixPath()
) -> list[tuple[PurePosixPath, Traversable]]:
    """The template files under ``folder`` (``.tmpl``), by path relative to it."""
    found: list[tuple[PurePosixPath, Traversable]] = []
    for item in sorted(folder.iterdir(), key=lambda item: item.name):
        if item.is_dir():
            found.extend(_files(item, relative / item.name))
        elif item.name.endswith(_SUFFIX):
            found.append((relative / item.name, item))
    return found


def _target_name(piece: str, package: str) -> str:
    piece = piece.removesuffix(_SUFFIX)
    return {"package": package, "dockerignore": ".dockerignore"}.get(piece, piece)
