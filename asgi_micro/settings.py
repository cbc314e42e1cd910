"""``MICRO_*`` environment variables: the settings a ``Service`` takes when its arguments do
not say otherwise."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import PositiveFloat, PositiveInt, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from . import broker as broker_module
from . import data as data_module
from . import registry as registry_module
from . import store as store_module
from . import sync as sync_module
from .limits import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_HEADER_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
    ServerLimits,
)

__all__ = ["Settings"]


class Settings(BaseSettings):
    """``MICRO_REGISTRY``, ``MICRO_STORE``, ``MICRO_ADDRESS``...; arguments to ``Service``
    take precedence. ``MICRO_AUTH`` and ``MICRO_AUTH_DEFAULT`` are described in
    ``asgi_micro.auth.guard``. ``MICRO_PROPAGATE`` is a comma-separated list of metadata keys (``*``
    for all). The limits (``MICRO_MAX_MESSAGE_SIZE``, ``MICRO_MAX_HEADER_SIZE``,
    ``MICRO_HEADER_TIMEOUT``, ``MICRO_BODY_TIMEOUT``, ``MICRO_MAX_CONNECTIONS``) are described
    in ``asgi_micro.limits``. ``MICRO_METRICS=off`` turns the metrics off
    (``asgi_micro.metrics``)."""

    model_config = SettingsConfigDict(env_prefix="MICRO_", extra="ignore")

    registry: str = registry_module.DEFAULT_URL
    store: str = store_module.DEFAULT_URL
    database: str = data_module.DEFAULT_URL
    """``MICRO_DATABASE``: where the service's SQLModel tables live (``asgi_micro.data``)."""
    broker: str = broker_module.DEFAULT_URL
    auth: str = ""
    """An auth URL turns auth on (``jwt://...``) or off (``noop://``); unset, auth is
    ``jwt://`` and open, unless ``auth_default`` is ``deny``."""
    auth_default: Literal["open", "deny"] = "open"
    sync: str = sync_module.DEFAULT_URL
    """``MICRO_SYNC``: locks and leader election (``memory://``, ``store://``, ``redis://``...)."""
    address: str | None = None
    grpc: bool = True
    grpc_address: str | None = None
    grpc_package: str | None = None
    register_ttl: float = 30.0
    register_interval: float = 10.0
    propagate: Annotated[tuple[str, ...], NoDecode] = ()
    max_message_size: PositiveInt = DEFAULT_MAX_MESSAGE_SIZE
    trust_callers: bool = True
    max_header_size: PositiveInt = DEFAULT_MAX_HEADER_SIZE
    header_timeout: PositiveFloat = DEFAULT_HEADER_TIMEOUT
    body_timeout: PositiveFloat = DEFAULT_BODY_TIMEOUT
    max_connections: PositiveInt = DEFAULT_MAX_CONNECTIONS
    metrics: bool = True
    local_calls: bool = True
    """``MICRO_LOCAL_CALLS``: a call to a node served in the same process skips sockets and
    codecs (``asgi_micro.local``)."""
    tracing: bool | None = None
    """``MICRO_TRACING``: spans of every call (``asgi_micro.tracing``); unset, tracing is on
    when the ``OTEL_*`` environment asks for traces."""
    gc_freeze: bool = False
    """``MICRO_GC_FREEZE``: once the service started, leave the objects start-up made out of
    the garbage collector's rounds (``asgi_micro.heap``); ``asgi-micro run`` and
    ``asgi-micro api`` turn it on unless it is set."""

    @field_validator("propagate", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(key.strip().lower() for key in value.split(",") if key.strip())
        return value

    def server_limits(self) -> ServerLimits:
        """What the HTTP server bounds per connection, from these settings."""
        return ServerLimits(
            max_header_size=self.max_header_size,
            header_timeout=self.header_timeout,
            body_timeout=self.body_timeout,
            max_connections=self.max_connections,
        )
