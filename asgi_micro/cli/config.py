"""``asgi-micro config``: show, get and set a service's config from a shell.

``show`` and ``get`` load the config as a service would and so need its model, as an import
path: ``--model settings:Settings`` (the working directory is importable), or
``MICRO_CONFIG_MODEL``. The sources are those of ``asgi_micro.config.default_sources``:
``--file`` (repeatable, TOML/YAML/JSON, later over earlier), ``--env-file`` (``.env``), the
environment under ``--env-prefix`` (``MICRO_CONFIG_``), then the store records under
``--prefix`` (``config/``) in ``--store`` (``MICRO_STORE``), database ``--database`` and table
``--table``; a service keeps its records in the table named after it. Secrets are masked.

``set PATH VALUE`` writes the store record ``<prefix>PATH``; VALUE is JSON (``10``, ``true``,
``'{"host": "db"}'``) or else taken as a string. With ``--model``, the whole config is validated
with the new value first and nothing is written if it does not validate.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import orjson
import typer
from pydantic import BaseModel, SecretBytes, SecretStr
from pydantic_core import to_jsonable_python
from rich.table import Table
from rich.text import Text

from ..config import (
    DEFAULT_ENV_PREFIX,
    DEFAULT_STORE_PREFIX,
    Config,
    ConfigError,
    Source,
    StoreSource,
    Values,
    default_sources,
)
from ..config.paths import mask, nest, value_at
from ..errors import MicroError
from ..plugins import MissingDependency
from ..store import DEFAULT_DATABASE, DEFAULT_TABLE, DEFAULT_URL, Store, from_url
from .common import JsonOption, console, errors, print_json, print_table
from .store import DatabaseOption, StoreOption, TableOption

__all__ = ["app", "get", "set_value", "show"]

T = TypeVar("T")

app = typer.Typer(
    help="Show, get and set the config of a service.", no_args_is_help=True, add_completion=False
)

ModelOption = Annotated[
    str,
    typer.Option(
        "--model",
        envvar="MICRO_CONFIG_MODEL",
        help="The settings model as module:Class, e.g. settings:Settings.",
    ),
]
OptionalModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        envvar="MICRO_CONFIG_MODEL",
        help="The settings model as module:Class; the new config is validated before writing.",
    ),
]
FileOption = Annotated[
    list[Path] | None,
    typer.Option("--file", "-f", help="A TOML, YAML or JSON file; repeat, later over earlier."),
]
EnvFileOption = Annotated[Path, typer.Option("--env-file", help="The .env file.")]
EnvPrefixOption = Annotated[str, typer.Option("--env-prefix", help="Environment prefix.")]
PrefixOption = Annotated[str, typer.Option("--prefix", help="Store key prefix of the settings.")]


@app.command()
def show(
    model: ModelOption,
    file: FileOption = None,
    env_file: EnvFileOption = Path(".env"),
    env_prefix: EnvPrefixOption = DEFAULT_ENV_PREFIX,
    store: StoreOption = DEFAULT_URL,
    database: DatabaseOption = DEFAULT_DATABASE,
    table: TableOption = DEFAULT_TABLE,
    prefix: PrefixOption = DEFAULT_STORE_PREFIX,
    as_json: JsonOption = False,
) -> None:
    """Print every setting with its value and the source that set it."""
    model_class = _import_model(model)

    async def load(s: Store) -> Config[Any]:
        sources = default_sources(
            files=file or [], env_file=env_file, env_prefix=env_prefix, store=s, store_prefix=prefix
        )
        return await _loaded(model_class, sources)

    config = _with_store(store, database, table, as_json, load)
    settings = config.settings()
    if as_json:
        print_json(
            {s.path: {"value": _jsonable(s.path, s.value), "source": s.source} for s in settings}
        )
        return
    rows = Table("setting", "value", "source")
    for s in settings:
        rows.add_row(Text(s.path), Text(_text(s.path, s.value)), Text(s.source))
    print_table(rows)


@app.command()
def get(
    path: Annotated[str, typer.Argument(help="The setting's dotted path, e.g. db.pool.")],
    model: ModelOption,
    file: FileOption = None,
    env_file: EnvFileOption = Path(".env"),
    env_prefix: EnvPrefixOption = DEFAULT_ENV_PREFIX,
    store: StoreOption = DEFAULT_URL,
    database: DatabaseOption = DEFAULT_DATABASE,
    table: TableOption = DEFAULT_TABLE,
    prefix: PrefixOption = DEFAULT_STORE_PREFIX,
    reveal: Annotated[bool, typer.Option("--reveal", help="Print secrets unmasked.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Print the value in force at PATH (a string as it is, anything else as JSON)."""
    model_class = _import_model(model)

    async def load(s: Store) -> tuple[Any, str]:
        sources = default_sources(
            files=file or [], env_file=env_file, env_prefix=env_prefix, store=s, store_prefix=prefix
        )
        config = await _loaded(model_class, sources)
        try:
            return value_at(config.value, path), config.source_of(path)
        except (LookupError, ValueError) as exc:
            raise ConfigError(str(exc)) from None

    value, source = _with_store(store, database, table, as_json, load)
    shown = _jsonable(path, value, reveal=reveal)
    if as_json:
        print_json({"path": path, "value": shown, "source": source})
    elif isinstance(shown, str):
        console.print(shown, markup=False, highlight=False)
    else:
        console.print(orjson.dumps(shown).decode(), markup=False, highlight=False)


@app.command("set")
def set_value(
    path: Annotated[str, typer.Argument(help="The setting's dotted path, e.g. db.pool.")],
    value: Annotated[str, typer.Argument(help="JSON, or else a string.")],
    model: OptionalModelOption = None,
    file: FileOption = None,
    env_file: EnvFileOption = Path(".env"),
    env_prefix: EnvPrefixOption = DEFAULT_ENV_PREFIX,
    store: StoreOption = DEFAULT_URL,
    database: DatabaseOption = DEFAULT_DATABASE,
    table: TableOption = DEFAULT_TABLE,
    prefix: PrefixOption = DEFAULT_STORE_PREFIX,
    as_json: JsonOption = False,
) -> None:
    """Write VALUE for PATH to the store; running services pick it up within a second."""
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        parsed = value
    try:
        nest(path, parsed)
    except ValueError as exc:
        errors.print(str(exc), markup=False)
        raise typer.Exit(2) from None
    model_class = _import_model(model) if model else None

    async def write(s: Store) -> tuple[str, int]:
        source = StoreSource(s, prefix=prefix)
        if model_class is not None:
            sources: list[Source] = default_sources(
                files=file or [],
                env_file=env_file,
                env_prefix=env_prefix,
                store=s,
                store_prefix=prefix,
            )
            sources.append(Values(nest(path, parsed), name=f"the new value of {path}"))
            await _loaded(model_class, sources)
        record = await s.write_json(source.key(path), parsed)
        return record.key, record.version

    key, version = _with_store(store, database, table, as_json, write)
    if as_json:
        print_json({"path": path, "key": key, "version": version})
    else:
        console.print(f"set {path} (record {key!r} at version {version})")


async def _loaded(model: type[BaseModel], sources: list[Source]) -> Config[Any]:
    config: Config[Any] = Config(model, sources=sources, watch_files=False)
    await config.start()
    await config.stop()
    return config


def _import_model(target: str) -> type[BaseModel]:
    module_name, colon, name = target.partition(":")
    if not colon or not module_name or not name:
        errors.print(f"--model takes module:Class, got {target!r}", markup=False)
        raise typer.Exit(2)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found: Any = importlib.import_module(module_name)
        for part in name.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        errors.print(f"cannot import the model {target!r}: {exc}", markup=False)
        raise typer.Exit(2) from None
    if not (isinstance(found, type) and issubclass(found, BaseModel)):
        errors.print(f"{target!r} is not a pydantic model class", markup=False)
        raise typer.Exit(2)
    return found


def _with_store(
    url: str, database: str, table: str, as_json: bool, action: Callable[[Store], Awaitable[T]]
) -> T:
    async def go() -> T:
        async with from_url(url).database(database).table(table) as store:
            return await action(store)

    try:
        return asyncio.run(go())
    except ConfigError as exc:
        _fail(as_json, "config", str(exc))
    except (ValueError, MissingDependency) as exc:
        errors.print(str(exc), markup=False)
        raise typer.Exit(2) from None
    except MicroError as exc:
        if as_json:
            sys.stderr.write(exc.to_json().decode() + "\n")
        else:
            errors.print(str(exc), markup=False)
        raise typer.Exit(1) from None


def _fail(as_json: bool, kind: str, detail: str) -> NoReturn:
    if as_json:
        sys.stderr.write(orjson.dumps({"error": kind, "detail": detail}).decode() + "\n")
    else:
        errors.print(detail, markup=False)
    raise typer.Exit(1)


def _jsonable(path: str, value: Any, *, reveal: bool = False) -> Any:
    """``value`` as JSON carries it, secrets at any depth masked (or, with ``reveal``, shown)."""
    if isinstance(value, BaseModel):
        fields = type(value).model_fields
        return {
            name: _jsonable(f"{path}.{name}", getattr(value, name), reveal=reveal)
            for name in fields
        }
    if isinstance(value, dict):
        return {key: _jsonable(f"{path}.{key}", item, reveal=reveal) for key, item in value.items()}
    if not reveal:
        return to_jsonable_python(mask(path, value))
    if isinstance(value, SecretStr | SecretBytes):
        secret = value.get_secret_value()
        return secret.decode(errors="replace") if isinstance(secret, bytes) else secret
    return to_jsonable_python(value)


def _text(path: str, value: Any) -> str:
    shown = _jsonable(path, value)
    return shown if isinstance(shown, str) else orjson.dumps(shown).decode()
