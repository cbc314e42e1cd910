"""Finding the app a command serves or describes (``module:attr`` or a path to a file), and
the service that serves it."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import typer

from ..service import Service

__all__ = ["check_importable", "import_app", "locate_app", "service_of", "target_service"]


def locate_app(target: str) -> tuple[str, str]:
    """``(import string, directory to import from)`` for ``module:attr`` or a file path.

    A file inside packages (directories with ``__init__.py``) is imported by its dotted path
    from the first directory above them, so its own absolute imports work.
    """
    path_part, _, attr = target.partition(":")
    path = Path(path_part)
    if path.suffix == ".py" or path.exists():
        if path.is_dir():
            raise typer.BadParameter(
                f"{path_part} is a directory; name the .py file that holds the app",
                param_hint="APP",
            )
        if not path.is_file():
            raise typer.BadParameter(f"no such file: {path_part}", param_hint="APP")
        path = path.resolve()
        parts = [path.stem]
        root = path.parent
        while (root / "__init__.py").exists():
            parts.insert(0, root.name)
            root = root.parent
        return f"{'.'.join(parts)}:{attr or 'app'}", str(root)
    if not attr:
        raise typer.BadParameter("expected module:attr or a path to a .py file", param_hint="APP")
    return target, "."


def check_importable(import_string: str, app_dir: str) -> None:
    """Refuse, in one line, a module that is not there (``nope.module:app``), before a server
    starts and says it in a traceback; a module that is there but fails to import is the
    server's to report, with the traceback that finds the bug."""
    module_name = import_string.partition(":")[0]
    sys.path.insert(0, app_dir)
    try:
        found = importlib.util.find_spec(module_name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        found = False
    finally:
        sys.path.remove(app_dir)
    if not found:
        raise typer.BadParameter(f"no module named {module_name!r}", param_hint="APP")


def import_app(target: str) -> Any:
    """The object ``target`` names (see ``locate_app``)."""
    import_string, app_dir = locate_app(target)
    module_name, _, attr = import_string.partition(":")
    sys.path.insert(0, app_dir)
    try:
        module = importlib.import_module(module_name)
    finally:
        sys.path.remove(app_dir)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise typer.BadParameter(
            f"{module_name} has no attribute {attr!r}", param_hint="APP"
        ) from None


def service_of(app: Any, module: Any) -> Service | None:
    """The ``Service`` of an app: the one its ``MicroMiddleware`` got, else the only one its
    module defines (``FastAPI(lifespan=service.lifespan)``)."""
    for middleware in getattr(app, "user_middleware", ()):
        service = middleware.kwargs.get("service")
        if isinstance(service, Service):
            return service
    found = [value for value in vars(module).values() if isinstance(value, Service)]
    return found[0] if len(found) == 1 else None


def target_service(target: str, app: Any) -> Service | None:
    """The ``Service`` of ``app``, which ``target`` named and ``import_app`` imported, as
    ``service_of`` finds it in that module."""
    return service_of(app, sys.modules[locate_app(target)[0].partition(":")[0]])
