"""What every ``nats://`` backend does the same way: read its URL, show it without secrets, and
open a connection that gives up at start but reconnects for ever once it is up.

    nats://[user:password@]host:4222[,host2:4222][?option=value&...]
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import nats.errors
from nats.aio.client import Client
from nats.protocol import command as prot_command

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
    """nats-py's client, writing and reading message headers in less than half the time.

    Every event carries nine headers (its CloudEvents attributes, ``Nats-Msg-Id``,
    ``Nats-Expected-Stream``...). nats-py writes each with eight steps of its own and reads
    each by testing every character of its name for whitespace in a generator: together about
    15 us of the 110 us an event costs its publisher and subscriber. The two methods here
    produce the same bytes and the same dicts, which ``tests/broker/test_nats.py`` checks
    against nats-py's own with hypothesis; the rest of ``_send_publish`` is nats-py's.
    """

    async def _send_publish(
        self,
        subject: str,
        reply: str,
        payload: bytes,
        payload_size: int,
        headers: dict[str, Any] | None,
    ) -> None:
        if headers is None:
            await super()._send_publish(subject, reply, payload, payload_size, headers)
            return
        if subject == "":
            raise nats.errors.BadSubjectError
        lines = ["NATS/1.0\r\n"]
        names = _CHECKED_NAMES
        for name, value in headers.items():
            key = names.get(name)
            if key is None:
                key = name.strip()
                if not key:
                    continue  # (as nats-py: skipped)
                if not _HEADER_NAME.fullmatch(key):
                    raise nats.errors.BadHeaderError(key)
                if len(names) < _MAX_CHECKED:
                    names[name] = key
            value = value.strip()
            if "\r" in value or "\n" in value:
                value = value.translate(_NEWLINES)
            lines.append(f"{key}: {value}\r\n")
        lines.append("\r\n")
        command = prot_command.hpub_cmd(subject, reply, "".join(lines).encode(), payload)
        self.stats["out_msgs"] += 1
        self.stats["out_bytes"] += payload_size
        await self._send_command(command)
        if self._flush_queue is not None and self._flush_queue.empty():
            await self._flush_pending()

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


_HEADER_NAME: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # (nats-py's: a token)
_NEWLINES: Final = str.maketrans({"\r": " ", "\n": " "})
_CHECKED_NAMES: dict[str, str] = {}  # a name as given -> as written, once it passed the check
_MAX_CHECKED: Final = 1024


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
