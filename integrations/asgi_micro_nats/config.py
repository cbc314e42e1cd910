"""A NATS JetStream key-value bucket as a config source, watched for changes.

    NATSKVSource("nats://127.0.0.1:4222", "micro-config", prefix="greeter.")

One key per setting, as in the store source: the key is ``<prefix><dotted path>``
(``greeter.db.pool``; NATS KV keys allow dots) and the value is JSON (``10``, ``"hi"``,
``{"host": "db"}``). Keys are applied in key order, so ``greeter.db.pool`` refines
``greeter.db``. A prefix is empty (the whole bucket) or ends with a dot, since the source
watches the subject ``<prefix>>``. A missing bucket or one without such keys sets nothing;
the source does not create the bucket (its history, replicas and limits are the operator's).

``load`` reads the latest value of every key under the prefix in one pass (a watcher that
stops after the last current entry), rather than ``keys()`` and one ``get`` per key.
``changes()`` keeps a watcher open and yields on every put, delete and purge, so a change is
in force as soon as the config reloads. On a reconnect the watcher starts again and yields
if anything changed meanwhile; a bucket that is missing is looked for again every
``retry`` seconds.

The source opens its connection on first use and closes it in ``aclose()``, which runs when
``changes()`` ends (``Config.stop`` cancels it). A ``client`` given instead is the caller's:
used as it is, never closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final
from urllib.parse import urlsplit

import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from pydantic import BaseModel

from asgi_micro.config.paths import merge, nest
from asgi_micro.config.sources import ConfigError, Source, describe

__all__ = ["DEFAULT_BUCKET", "NATSKVSource"]

logger = logging.getLogger(__name__)

DEFAULT_BUCKET: Final = "micro-config"
_DELETED: Final = (KV_DEL, KV_PURGE)
_NATS_ERRORS: Final = (OSError, TimeoutError, nats.errors.Error)


class NATSKVSource(Source):
    """The keys ``<prefix><path>`` of JSON values in the KV ``bucket`` at ``url`` (servers
    separated by commas), or through ``client``; ``timeout`` bounds the connect and each
    JetStream request."""

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        bucket: str = DEFAULT_BUCKET,
        *,
        prefix: str = "",
        client: Client | None = None,
        timeout: float = 5.0,
        retry: float = 1.0,
    ) -> None:
        if prefix and not (prefix.endswith(".") and _valid_key(prefix[:-1])):
            raise ValueError(f"a KV config prefix is '' or keys ending in '.', got {prefix!r}")
        if timeout <= 0 or retry <= 0:
            raise ValueError("timeout and retry must be positive")
        self.servers = [server.strip() for server in url.split(",")]
        self.url = _without_credentials(url)
        self.bucket = bucket
        self.prefix = prefix
        self.timeout = timeout
        self.retry = retry
        self.name = f"nats-kv:{bucket}/{prefix}"
        self._client = client
        self._nc: Client | None = None
        self._connecting = asyncio.Lock()
        self._watcher: KeyValue.KeyWatcher | None = None
        self._loaded: dict[str, int] | None = None
        """The revision of each key the last load read."""

    def key(self, path: str) -> str:
        """The KV key that holds the setting ``path``."""
        nest(path, None)  # checks the path
        return f"{self.prefix}{path}"

    async def load(self, model: type[BaseModel]) -> dict[str, Any]:
        try:
            kv = await self._bucket()
            entries = [] if kv is None else await self._latest(kv)
        except _NATS_ERRORS as exc:
            raise ConfigError(
                f"{self.name}: cannot read from NATS at {self.url}: {exc!r}"
            ) from None
        self._loaded = _revisions(entries)
        data: dict[str, Any] = {}
        for entry in sorted(entries, key=lambda entry: entry.key):
            path = entry.key.removeprefix(self.prefix)
            try:
                piece = nest(path, orjson.loads(entry.value or b""))
            except (orjson.JSONDecodeError, ValueError) as exc:
                raise ConfigError(f"{self.name}: key {entry.key!r}: {describe(exc)}") from None
            merge(data, piece, self.name, {})
        return data

    async def changes(self) -> AsyncIterator[None]:
        """Yields on each change under the prefix; ends (closing the connection) when the
        caller stops iterating."""
        failing = False
        try:
            while True:
                try:
                    kv = await self._bucket()
                    watcher = None if kv is None else await kv.watch(f"{self.prefix}>")
                except (ConfigError, *_NATS_ERRORS) as exc:
                    if not failing:
                        logger.warning("%s: cannot watch for config changes: %s", self.name, exc)
                    failing = True
                    await asyncio.sleep(self.retry)
                    continue
                failing = False
                if watcher is None:  # no bucket yet: nothing to watch, nothing set
                    if self._loaded:
                        yield
                    await asyncio.sleep(self.retry)
                    continue
                self._watcher = watcher
                try:
                    current: list[KeyValue.Entry] | None = []
                    async for entry in watcher:
                        if current is None:
                            yield
                        elif entry is None:  # the entries that were there are all in
                            if _revisions(current) != self._loaded:
                                yield
                            current = None
                        else:
                            current.append(entry)
                finally:
                    self._watcher = None
                    await _stop(watcher)
                # stopped by a reconnect: watch again, from what is there now
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Stop watching and close the connection this source opened; idempotent."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            await _stop(watcher)
        nc, self._nc = self._nc, None
        if nc is not None and nc is not self._client:
            await nc.close()

    # -- internals ----------------------------------------------------------------------------

    async def _bucket(self) -> KeyValue | None:
        """The bucket, connecting first if need be; ``None`` while it does not exist."""
        # Looked up each time (one request), so a bucket deleted or made later is seen.
        nc = await self._connect()
        try:
            return await nc.jetstream(timeout=self.timeout).key_value(self.bucket)
        except nats.js.errors.BucketNotFoundError:
            return None
        except nats.errors.NoRespondersError:
            raise ConfigError(f"{self.name}: NATS at {self.url} has no JetStream") from None

    async def _connect(self) -> Client:
        async with self._connecting:
            if self._nc is not None:
                return self._nc
            if self._client is not None:
                self._nc = self._client
                return self._nc
            nc = Client()
            try:
                # max_reconnect_attempts=-1 would retry the first connect forever too
                await asyncio.wait_for(
                    nc.connect(
                        self.servers,
                        name="asgi-micro config",
                        max_reconnect_attempts=-1,
                        connect_timeout=max(1, round(self.timeout)),
                        error_cb=self._error,
                        reconnected_cb=self._reconnected,
                    ),
                    timeout=self.timeout,
                )
            except _NATS_ERRORS as exc:
                await nc.close()
                raise ConfigError(
                    f"{self.name}: cannot reach NATS at {self.url}: {exc!r}"
                ) from None
            self._nc = nc
            return nc

    async def _latest(self, kv: KeyValue) -> list[KeyValue.Entry]:
        watcher = await kv.watch(f"{self.prefix}>")
        try:
            entries = []
            while True:
                entry = await watcher.updates(timeout=self.timeout)  # type: ignore[no-untyped-call]
                if entry is None:  # the last current entry is in
                    break
                entries.append(entry)
            return [entry for entry in entries if entry.operation not in _DELETED]
        finally:
            await _stop(watcher)

    async def _reconnected(self) -> None:
        # The watcher's consumer may be gone with the old connection; one started afresh
        # reports what changed meanwhile at once, instead of after its missed heartbeats.
        watcher = self._watcher
        if watcher is not None:
            logger.warning("%s: reconnected to NATS; watching again", self.name)
            await _stop(watcher)

    async def _error(self, exc: Exception) -> None:
        logger.warning("%s: NATS at %s: %r", self.name, self.url, exc)


def _revisions(entries: Sequence[KeyValue.Entry]) -> dict[str, int]:
    return {entry.key: entry.revision or 0 for entry in entries if entry.operation not in _DELETED}


async def _stop(watcher: KeyValue.KeyWatcher) -> None:
    with contextlib.suppress(*_NATS_ERRORS):
        await watcher.stop()  # type: ignore[no-untyped-call]


def _valid_key(key: str) -> bool:
    return (
        bool(key)
        and all(part for part in key.split("."))
        and key.isascii()
        and all(char.isalnum() or char in "-/_=." for char in key)
    )


def _without_credentials(url: str) -> str:
    """``url`` as it may be logged: a password or token replaced by ``***``."""
    shown = []
    for server in url.split(","):
        split = urlsplit(server.strip() if "//" in server else f"nats://{server.strip()}")
        credentials, at, host = split.netloc.rpartition("@")
        if at:
            user, colon, _ = credentials.partition(":")
            split = split._replace(netloc=(f"{user}:***@" if colon else "***@") + host)
        shown.append(split.geturl())
    return ",".join(shown)
