"""What every ``nats://`` backend does the same way: read its URL, show it without secrets, and
open a connection that gives up at start but reconnects for ever once it is up.

    nats://[user:password@]host:4222[,host2:4222][?option=value&...]
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import nats.errors
from nats.aio.client import Client

__all__ = ["NATSURL", "NATS_ERRORS", "MicroClient", "connect", "parse_url"]

logger = logging.getLogger(__name__)

NATS_ERRORS = (OSError, TimeoutError, nats.errors.Error)
"""What a NATS request may raise when the server is away or refuses."""

Callback = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class NATSURL:
    servers: list[str]
    """One ``nats://`` URL per server, credentials included, for nats-py."""
    shown: str
    """The URL as it may be logged: a password or a token replaced by ``***``."""
    options: dict[str, str]
    """The query options, the last one of a name winning."""


def parse_url(url: str, *, options: Collection[str]) -> NATSURL:
    """Split ``url`` into servers, the URL as shown and its options; an option not in
    ``options`` is a ``ValueError`` that lists them."""
    split = urlsplit(url)
    credentials, _, hosts = split.netloc.rpartition("@")
    login = credentials + "@" if credentials else ""
    servers = [f"nats://{login}{host}" for host in (hosts or "127.0.0.1:4222").split(",")]
    query = {
        name: values[-1] for name, values in parse_qs(split.query, keep_blank_values=True).items()
    }
    if credentials:  # a password or a token is not for logs, nor for error messages
        user, colon, _ = credentials.partition(":")
        split = split._replace(netloc=(f"{user}:***@" if colon else "***@") + hosts)
    shown = split.geturl()
    unknown = set(query) - set(options)
    if unknown:
        raise ValueError(
            f"unknown option {sorted(unknown)[0]!r} in {shown!r}; "
            f"the options are {', '.join(sorted(options))}"
        )
    return NATSURL(servers=servers, shown=shown, options=query)


class MicroClient(Client):
    """nats-py's client, reading message headers in less than half the time.

    Every event carries eight headers (its CloudEvents attributes, ``Nats-Msg-Id``...), and
    nats-py's reader tests each character of each name for whitespace in a generator: about
    9 us of an event's 150. The reader here gives the same result, which
    ``tests/broker/test_nats.py`` checks against nats-py's own with hypothesis.
    """

    @staticmethod
    def _parse_header_lines(raw: bytes) -> dict[str, str]:
        out: dict[str, str] = {}
        for line in raw.split(b"\r\n"):
            name, colon, value = line.partition(b":")
            if not colon:
                continue
            try:
                key = name.strip().decode("ascii")
            except UnicodeDecodeError:
                continue  # (as nats-py: a name is a token)
            if key and key.split() != [key]:
                continue  # whitespace inside the name (str.split's is str.isspace's)
            out[key] = value.strip().decode("utf-8", "replace")
        return out


async def connect(
    servers: Sequence[str],
    *,
    name: str,
    timeout: float,
    disconnected: Callback | None = None,
    reconnected: Callback | None = None,
) -> Client:
    """A connection to one of ``servers``, or what nats-py raised within ``timeout`` (one of
    ``NATS_ERRORS``). Once connected, nats-py reconnects by itself for as long as it runs."""
    nc = MicroClient()
    try:
        # max_reconnect_attempts=-1 counts for the first connection too: without wait_for it
        # would try for ever
        await asyncio.wait_for(
            nc.connect(
                list(servers),
                name=name,
                max_reconnect_attempts=-1,
                connect_timeout=max(1, round(timeout)),
                error_cb=_log_error,
                disconnected_cb=disconnected,
                reconnected_cb=reconnected,
            ),
            timeout=timeout,
        )
    except BaseException:
        await nc.close()
        raise
    return nc


async def _log_error(exc: Exception) -> None:
    logger.warning("NATS: %r", exc)
