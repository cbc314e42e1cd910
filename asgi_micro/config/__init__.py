"""Typed config with hot reload: a pydantic model from defaults, files, ``.env``, the
environment and the store, in that order of precedence.

    class Settings(BaseModel):
        db: DB
        greeting: str = "hi"

    config = Config(Settings, sources=default_sources(files=["config.toml"], store=store))
    async with config:
        config.value.db.pool, config.source_of("db.pool")
        async for change in config.watch("db.pool"): ...

With NATS: ``sources=[*default_sources(), NATSKVSource(bucket="micro-config",
prefix="greeter.")]`` (``asgi_micro_nats.config``), keys the dotted paths holding JSON.

Secrets (``SecretStr`` fields, or names such as ``password``, ``secret``, ``token``) are
masked wherever the config is shown or logged.
"""

from __future__ import annotations

from .config import Callback, Change, Config, Setting, Watch
from .paths import MASK, is_secret
from .sources import (
    DEFAULT_ENV_PREFIX,
    DEFAULT_STORE_PREFIX,
    DEFAULTS,
    ConfigError,
    DotEnv,
    Env,
    File,
    Source,
    StoreSource,
    Values,
    default_sources,
)

__all__ = [
    "DEFAULTS",
    "DEFAULT_ENV_PREFIX",
    "DEFAULT_STORE_PREFIX",
    "MASK",
    "Callback",
    "Change",
    "Config",
    "ConfigError",
    "DotEnv",
    "Env",
    "File",
    "Setting",
    "Source",
    "StoreSource",
    "Values",
    "Watch",
    "default_sources",
    "is_secret",
]
