"""``postgresql://`` and ``cockroachdb://``: the SQL store on asyncpg.

The store itself is ``asgi_micro.store.sql.SQLStore``; the URL table points here so that a
missing asyncpg fails on import, where the backend loader names the extra that installs it.
"""

from __future__ import annotations

import asyncpg  # noqa: F401

from .sql import SQLStore

__all__ = ["SQLStore"]
