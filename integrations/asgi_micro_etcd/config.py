"""Keys under a prefix on etcd as a config source, watched for changes.

    EtcdSource("etcd://127.0.0.1:2379?prefix=/micro/config/greeter/")

One key per setting, as in the store source: the key is ``<prefix><dotted path>``
(``/micro/config/greeter/db.pool``) and the value is JSON (``10``, ``"hi"``,
``{"host": "db"}``). Keys are applied in key order, so ``db.pool`` refines ``db``. The rest of
a key after the prefix is the path whole: ``greeter/db.pool`` under ``/micro/config/`` names a
setting ``greeter/db`` that a model without it ignores, so give each service a prefix of its
own (``/micro/config/greeter/``).

``load`` reads every key under the prefix in one range request and remembers the revision it
read at. ``changes()`` keeps an etcd watch on the prefix from the revision after that one, so
no change between the load and the watch is missed, and yields on every put and delete. When
the watch breaks (etcd away, the history compacted), the source connects again every
``retry`` seconds, watches on from the last revision it saw, and yields once to reload; an
etcd that comes back behind that revision lost its data, and is followed from its own.

The source opens its connection on first use and closes it in ``aclose()``, which runs when
``changes()`` ends (``Config.stop`` cancels it). A ``client`` given instead is the caller's:
used as it is, never closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, Final

import aetcd
import orjson
from pydantic import BaseModel

from asgi_micro.config.paths import merge, nest
from asgi_micro.config.sources import ConfigError, Source, describe
from asgi_micro.errors import ServiceUnavailable

from ._client import connect, parse_url, raise_if_cancelled

__all__ = ["DEFAULT_PREFIX", "EtcdSource"]

logger = logging.getLogger(__name__)

DEFAULT_PREFIX: Final = "/micro/config/"


class EtcdSource(Source):
    """The keys ``<prefix><path>`` of JSON values on the etcd at ``url``, or through
    ``client``. ``prefix`` defaults to the URL's ``?prefix=``, else ``/micro/config/``; the
    URL's ``?timeout=`` bounds each request."""

    def __init__(
        self,
        url: str = "etcd://127.0.0.1:2379",
        *,
        prefix: str | None = None,
        client: aetcd.Client | None = None,
        retry: float = 1.0,
    ) -> None:
        self.etcd_url = parse_url(url)
        if self.etcd_url.options:
            raise ValueError(
                f"unknown options {sorted(self.etcd_url.options)} in {self.etcd_url.redacted!r}"
            )
        self.prefix = prefix or self.etcd_url.prefix or DEFAULT_PREFIX
        if retry <= 0:
            raise ValueError(f"retry must be positive, got {retry}")
        self.url = self.etcd_url.redacted
        self.retry = retry
        self.name = f"etcd:{self.prefix}"
        self._given = client
        self._etcd = client
        self._connecting = asyncio.Lock()
        self._watch: aetcd.Watch | None = None
        self._revision = 0
        """The latest etcd revision whose changes the source has read or reported."""

    def key(self, path: str) -> str:
        """The etcd key that holds the setting ``path``."""
        nest(path, None)  # checks the path
        return f"{self.prefix}{path}"

    async def load(self, model: type[BaseModel]) -> dict[str, Any]:
        try:
            client = await self._connect()
            found = await client.get_prefix(self.prefix.encode(), sort_target="key")
        except (ServiceUnavailable, aetcd.ClientError) as exc:
            await self._drop()
            raise ConfigError(f"{self.name}: cannot read from etcd at {self.url}: {exc}") from None
        self._revision = max(self._revision, found.header.revision)
        data: dict[str, Any] = {}
        for kv in found:
            key = kv.key.decode(errors="replace")
            try:
                piece = nest(key.removeprefix(self.prefix), orjson.loads(kv.value))
            except (orjson.JSONDecodeError, ValueError) as exc:
                raise ConfigError(f"{self.name}: key {key!r}: {describe(exc)}") from None
            merge(data, piece, self.name, {})
        return data

    async def changes(self) -> AsyncIterator[None]:
        """Yields on each change under the prefix; ends (closing the connection) when the
        caller stops iterating."""
        broken = False
        try:
            while True:
                try:
                    client = await self._connect()
                    if broken:
                        await self._follow_a_reset(client)
                    self._watch = await client.watch_prefix(
                        self.prefix.encode(),
                        start_revision=self._revision + 1 if self._revision else None,
                    )
                    raise_if_cancelled()  # the service stopping now must not wait on this
                except (ServiceUnavailable, aetcd.ClientError) as exc:
                    if not broken:
                        logger.warning("%s: cannot watch for config changes: %s", self.name, exc)
                    broken = True
                    await self._drop()
                    await asyncio.sleep(self.retry)
                    continue
                if broken:  # whatever the watch missed while it was down
                    broken = False
                    yield
                try:
                    async for event in self._watch:
                        self._revision = max(self._revision, event.kv.mod_revision)
                        yield
                except aetcd.RevisionCompactedError:  # history gone: reload, watch from now
                    logger.warning("%s: etcd compacted the revisions watched", self.name)
                    self._revision = 0
                    broken = True
                except aetcd.ClientError as exc:
                    logger.warning("%s: the etcd watch broke: %s", self.name, exc)
                    broken = True
                    await self._drop()
                    await asyncio.sleep(self.retry)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Stop watching and close the connection this source opened; idempotent."""
        watch, self._watch = self._watch, None
        if watch is not None:
            try:
                await watch.cancel()
            except aetcd.ClientError as exc:
                logger.debug("%s: cancelling the watch failed: %s", self.name, exc)
        await self._drop()

    async def _follow_a_reset(self, client: aetcd.Client) -> None:
        """After a break: an etcd whose revision is behind the one last seen was replaced (its
        data lost), and its history is not the one the source followed; go on from its own."""
        now = (await client.get_prefix(self.prefix.encode(), keys_only=True)).header.revision
        if now < self._revision:
            logger.warning("%s: etcd at %s went back to revision %d", self.name, self.url, now)
            self._revision = now

    async def _connect(self) -> aetcd.Client:
        async with self._connecting:
            if self._etcd is None:
                self._etcd = await connect(self.etcd_url)
            return self._etcd

    async def _drop(self) -> None:
        """Close the connection this source opened, so that the next use connects again."""
        client, self._etcd = self._etcd, self._given
        self._watch = None
        if client is not None and client is not self._given:
            await client.close()
