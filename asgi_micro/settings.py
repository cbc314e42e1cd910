"""``MICRO_*`` environment variables: the settings a ``Service`` takes when its arguments do
not say otherwise."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from . import registry as registry_module
from . import store as store_module

__all__ = ["Settings"]


class Settings(BaseSettings):
    """``MICRO_REGISTRY``, ``MICRO_STORE``, ``MICRO_ADDRESS``...; arguments to ``Service``
    take precedence. ``MICRO_PROPAGATE`` is a comma-separated list of metadata keys (``*``
    for all)."""

    model_config = SettingsConfigDict(env_prefix="MICRO_", extra="ignore")

    registry: str = registry_module.DEFAULT_URL
    store: str = store_module.DEFAULT_URL
    address: str | None = None
    grpc: bool = True
    grpc_address: str | None = None
    grpc_package: str | None = None
    register_ttl: float = 30.0
    register_interval: float = 10.0
    propagate: Annotated[tuple[str, ...], NoDecode] = ()

    @field_validator("propagate", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(key.strip().lower() for key in value.split(",") if key.strip())
        return value
