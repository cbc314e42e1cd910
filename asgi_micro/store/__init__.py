"""Key-value records with TTLs, prefix queries and compare-and-set.

``sqlite:///.micro/store.db`` is the embedded default; ``memory://`` keeps records in the
process; ``postgresql://`` and ``cockroachdb://`` need the ``postgres`` extra (asyncpg).
"""

from __future__ import annotations

from typing import Final

from ..plugins import Backend, Parts, load_backend
from .base import (
    ABSENT,
    DEFAULT_DATABASE,
    DEFAULT_TABLE,
    MAX_KEY_SIZE,
    MAX_METADATA_SIZE,
    MAX_NAME_SIZE,
    MAX_VALUE_SIZE,
    Fence,
    Record,
    Store,
)

__all__ = [
    "ABSENT",
    "BACKENDS",
    "DEFAULT_DATABASE",
    "DEFAULT_TABLE",
    "DEFAULT_URL",
    "MAX_KEY_SIZE",
    "MAX_METADATA_SIZE",
    "MAX_NAME_SIZE",
    "MAX_VALUE_SIZE",
    "Fence",
    "Record",
    "Store",
    "from_url",
]

DEFAULT_URL: Final = "sqlite:///.micro/store.db"
"""The embedded default: a SQLite file under ``.micro/`` in the working directory."""

BACKENDS: dict[str, Backend] = {
    "memory": Backend("asgi_micro.store.memory:MemoryStore"),
    "sqlite": Backend("asgi_micro.store.sql:SQLStore"),
    "postgresql": Backend("asgi_micro.store.postgres:SQLStore", extra="postgres"),
    "postgres": Backend("asgi_micro.store.postgres:SQLStore", extra="postgres"),
    "cockroachdb": Backend("asgi_micro.store.postgres:SQLStore", extra="postgres"),
}


def from_url(url: str, *, parts: Parts | None = None) -> Store:
    """The store that ``url`` names, e.g. ``sqlite:///.micro/store.db`` or ``memory://``.

    Nothing connects until ``start()``.
    """
    store: Store = load_backend("store", url, BACKENDS, parts=parts)
    return store
