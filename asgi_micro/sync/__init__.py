"""Distributed locks and leader election with fencing tokens, chosen by URL.

``memory://`` (the default) holds leases in the process; ``sqlite:///path.db`` and
``postgresql://...`` keep them in a table beside the store's (``store://`` uses the service's
own SQL store); ``redis://`` and ``etcd://`` come from the ``redis`` and ``etcd`` extras
through the ``asgi_micro.sync`` entry point.
"""

from __future__ import annotations

from typing import Final

from ..plugins import Backend, Parts, load_backend
from ..store.base import Fence
from .base import SYNC_ID, Lease, LeaseLost, LockTimeout, Sync

__all__ = [
    "BACKENDS",
    "DEFAULT_URL",
    "SYNC_ID",
    "Fence",
    "Lease",
    "LeaseLost",
    "LockTimeout",
    "Sync",
    "from_url",
]

DEFAULT_URL: Final = "memory://"
"""The embedded default: leases among the tasks of this process."""

BACKENDS: dict[str, Backend] = {
    "memory": Backend("asgi_micro.sync.memory:MemorySync"),
    "store": Backend("asgi_micro.sync.store:StoreSync"),
    "sqlite": Backend("asgi_micro.sync.store:StoreSync"),
    "postgresql": Backend("asgi_micro.sync.store:StoreSync", extra="postgres"),
    "postgres": Backend("asgi_micro.sync.store:StoreSync", extra="postgres"),
}


def from_url(url: str, *, parts: Parts | None = None) -> Sync:
    """The sync that ``url`` names, e.g. ``memory://`` or ``postgresql://host/db``.

    Nothing connects until ``start()``.
    """
    sync: Sync = load_backend("sync", url, BACKENDS, parts=parts)
    return sync
