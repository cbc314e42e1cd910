"""Where config values come from: files, ``.env``, the environment, a store, a mapping.

Files and the environment are read by pydantic-settings' own sources; a ``Config`` merges what
each source returns on top of the ones before it and remembers, per value, which source set it
(its ``name``). A source whose file is missing contributes nothing.

The store source keeps one record per setting: the key is ``<prefix><dotted path>``
(``config/db.pool``) and the value is JSON (``10``, ``"hi"``, ``{"host": "db"}``). Records are
applied in key order, so ``config/db.pool`` refines ``config/db``. The store has no watch, so
the source polls the records' versions (every 0.25 s by default). A NATS KV bucket is a source
too, watched rather than polled: ``asgi_micro_nats.config.NATSKVSource``, and so are keys under
a prefix on etcd: ``asgi_micro_etcd.config.EtcdSource``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tomllib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

import orjson
from pydantic import BaseModel
from pydantic_settings import (
    DotEnvSettingsSource,
    EnvSettingsSource,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsError,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from ..errors import MicroError
from .paths import merge, nest

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings

    from ..store import Record, Store

__all__ = [
    "DEFAULTS",
    "DEFAULT_ENV_PREFIX",
    "DEFAULT_STORE_PREFIX",
    "ConfigError",
    "DotEnv",
    "Env",
    "File",
    "Source",
    "StoreSource",
    "Values",
    "default_sources",
]

logger = logging.getLogger(__name__)

DEFAULTS: Final = "defaults"
"""The source name of a value no source set: the model's default."""
DEFAULT_ENV_PREFIX: Final = "MICRO_CONFIG_"
DEFAULT_STORE_PREFIX: Final = "config/"
NESTED_DELIMITER: Final = "__"
"""``MICRO_CONFIG_DB__POOL=10`` sets ``db.pool``, as in pydantic-settings."""


class ConfigError(ValueError):
    """A config that cannot be loaded or does not validate; the message never holds values."""


class Source(ABC):
    """One layer of config. ``name`` is what ``Config.source_of`` reports for its values."""

    name: str

    @abstractmethod
    async def load(self, model: type[BaseModel]) -> dict[str, Any]:
        """The values this source sets now, nested by field name; raises ``ConfigError``."""

    @property
    def files(self) -> tuple[Path, ...]:
        """Files whose changes mean this source may have changed (watched by ``Config``)."""
        return ()

    async def changes(self) -> AsyncIterator[None]:
        """Yields whenever the source may have changed, for a source that is not a file."""
        return
        yield  # pragma: no cover - makes this an async generator that yields nothing

    async def aclose(self) -> None:  # noqa: B027 - optional hook: most sources hold nothing
        """Release what the source holds (a connection); ``Config.stop`` calls it."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class Values(Source):
    """Values given in code, e.g. ``Values({"db": {"pool": 2}})`` for a test."""

    def __init__(self, values: Mapping[str, Any], *, name: str = "values") -> None:
        self.values = dict(values)
        self.name = name

    async def load(self, model: type[BaseModel]) -> dict[str, Any]:
        return dict(self.values)


_FORMATS: Final = {".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".json": "json"}


class File(Source):
    """A TOML, YAML or JSON file, by its suffix; a missing file sets nothing."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).absolute()
        try:
            self.format = _FORMATS[self.path.suffix.lower()]
        except KeyError:
            raise ValueError(
                f"config file {str(path)!r}: expected a .toml, .yaml, .yml or .json file"
            ) from None
        self.name = f"{self.format}:{self.path}"

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.path,)

    async def load(self, model: type[BaseModel]) -> dict[str, Any]:
        return await asyncio.to_thread(self._read, model)

    def _read(self, model: type[BaseModel]) -> dict[str, Any]:
        settings = _settings_class(model)
        source: PydanticBaseSettingsSource
        try:
            if self.format == "toml":
                source = TomlConfigSettingsSource(settings, toml_file=self.path)
            elif self.format == "yaml":
                source = YamlConfigSettingsSource(settings, yaml_file=self.path)
            else:
                source = JsonConfigSettingsSource(settings, json_file=self.path)
            return source()
        except Exception as exc:
            raise ConfigError(f"{self.name}: {describe(exc)}") from None


class DotEnv(Source):
    """A ``.env`` file of ``PREFIX_NAME=value`` lines, read as the environment is."""

    def __init__(
        self, path: str | os.PathLike[str] = ".env", *, prefix: str = DEFAULT_ENV_PREFIX
    ) -> None:
        self.path = Path(path).absolute()
        self.prefix = prefix
        self.name = f"dotenv:{self.path}"

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.path,)

    async def load(self, model: type[BaseModel]) -> dict[str, Any]:
        return await asyncio.to_thread(self._read, model)

    def _read(self, model: type[BaseModel]) -> dict[str, Any]:
        try:
            return DotEnvSettingsSource(
                _settings_class(model),
                env_file=self.path,
                env_prefix=self.prefix,
                env_nested_delimiter=NESTED_DELIMITER,
                dotenv_filtering="only_existing",
            )()
        except Exception as exc:
            raise ConfigError(f"{self.name}: {describe(exc)}") from None


class Env(Source):
    """Environment variables: ``PREFIX_GREETING=hi``, ``PREFIX_DB__POOL=10``, or a field as
    JSON (``PREFIX_DB='{"pool": 10}'``). Names are not case-sensitive."""

    def __init__(self, prefix: str = DEFAULT_ENV_PREFIX) -> None:
        self.prefix = prefix
        self.name = f"env:{prefix}"

    async def load(self, model: type[BaseModel]) -> dict[str, Any]:
        try:
            return EnvSettingsSource(
                _settings_class(model),
                env_prefix=self.prefix,
                env_nested_delimiter=NESTED_DELIMITER,
            )()
        except Exception as exc:
            raise ConfigError(f"{self.name}: {describe(exc)}") from None


class StoreSource(Source):
    """Records ``<prefix><path>`` of JSON values in ``store``, polled every ``interval`` seconds
    for changes. The store must be started before the config is."""

    def __init__(
        self, store: Store, *, prefix: str = DEFAULT_STORE_PREFIX, interval: float = 0.25
    ) -> None:
        if not prefix:
            raise ValueError("a store config source needs a key prefix, e.g. 'config/'")
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.store = store
        self.prefix = prefix
        self.interval = interval
        self.name = f"store:{store.database_name}/{store.table_name}/{prefix}"
        self._loaded: tuple[tuple[str, int, bytes], ...] | None = None

    def key(self, path: str) -> str:
        """The record key that holds the setting ``path``."""
        nest(path, None)  # checks the path
        return f"{self.prefix}{path}"

    async def load(self, model: type[BaseModel]) -> dict[str, Any]:
        try:
            records = await self.store.read(self.prefix, prefix=True)
        except (MicroError, RuntimeError) as exc:
            raise ConfigError(f"{self.name}: {exc}") from None
        self._loaded = _fingerprint(records)
        data: dict[str, Any] = {}
        for record in records:
            path = record.key.removeprefix(self.prefix)
            try:
                value = orjson.loads(record.value)
                piece = nest(path, value)
            except (orjson.JSONDecodeError, ValueError) as exc:
                raise ConfigError(f"{self.name}: record {record.key!r}: {describe(exc)}") from None
            merge(data, piece, self.name, {})
        return data

    async def changes(self) -> AsyncIterator[None]:
        """Yields while the records differ from those last loaded."""
        failing = False
        while True:
            try:
                records = await self.store.read(self.prefix, prefix=True)
            except Exception as exc:
                if not failing:
                    logger.warning("%s: cannot poll for config changes: %s", self.name, exc)
                failing = True
            else:
                failing = False
                if _fingerprint(records) != self._loaded:
                    yield
            await asyncio.sleep(self.interval)


def _fingerprint(records: Sequence[Record]) -> tuple[tuple[str, int, bytes], ...]:
    # The value too: a record deleted and written again between two polls restarts at version 1.
    return tuple((record.key, record.version, record.value) for record in records)


def default_sources(
    *,
    files: Sequence[str | os.PathLike[str]] = (),
    env_file: str | os.PathLike[str] | None = ".env",
    env_prefix: str = DEFAULT_ENV_PREFIX,
    store: Store | None = None,
    store_prefix: str = DEFAULT_STORE_PREFIX,
) -> list[Source]:
    """The sources in their usual order, each over the ones before (and all over the model's
    defaults): ``files`` in the order given, then ``env_file``, the environment, the store."""
    sources: list[Source] = [File(path) for path in files]
    if env_file is not None:
        sources.append(DotEnv(env_file, prefix=env_prefix))
    sources.append(Env(env_prefix))
    if store is not None:
        sources.append(StoreSource(store, prefix=store_prefix))
    return sources


def describe(exc: BaseException) -> str:
    """Why a source failed, without quoting its content (a YAML error quotes the line, which
    may hold a secret)."""
    if type(exc).__module__.startswith("yaml"):  # PyYAML has no type stubs here
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or "syntax error"
        return f"invalid YAML: {problem}{at}"
    if isinstance(exc, tomllib.TOMLDecodeError | json.JSONDecodeError | orjson.JSONDecodeError):
        return f"invalid {_kind(exc)}: {exc}"
    if isinstance(exc, SettingsError):  # names the field and the source, never the value
        return str(exc)
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    if isinstance(exc, ValueError) and str(exc).startswith("a config path"):
        return str(exc)
    return f"cannot be read ({type(exc).__name__})"


def _kind(exc: BaseException) -> str:
    return "TOML" if isinstance(exc, tomllib.TOMLDecodeError) else "JSON"


def _settings_class(model: type[BaseModel]) -> type[BaseSettings]:
    # pydantic-settings' sources read only ``model_fields`` and ``model_config`` of the class,
    # which every pydantic model has; the user's model need not be a BaseSettings.
    return cast("type[BaseSettings]", model)
