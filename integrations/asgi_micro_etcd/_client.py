"""The etcd URL and the connection every etcd backend of this package shares.

    etcd://[user:password@]host[:port][,host[:port]...][/]?prefix=/micro/registry/&timeout=5

Hosts are tried in order (the port defaults to 2379, an empty host list means
``127.0.0.1:2379``); ``connect`` returns a client on the first one that answers. aetcd speaks
to one host per client, so failing over is connecting again: a backend whose call failed for
want of a connection calls ``connect`` anew and gets the next host that answers. ``prefix``
and ``timeout`` are read here (``prefix`` is ``None`` when absent: each backend has its own
default); every other query option is left in ``EtcdURL.options`` for the backend to read or
refuse. The password never leaves this module but in the client: ``EtcdURL.redacted`` is the
URL to show.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import aetcd

from asgi_micro.errors import ServiceUnavailable

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_TIMEOUT",
    "EtcdURL",
    "connect",
    "parse_url",
    "raise_if_cancelled",
]

DEFAULT_PORT: Final = 2379
DEFAULT_TIMEOUT: Final = 5.0

# gRPC backs off up to two minutes between attempts to reach a host that went away; a
# registry must notice within a heartbeat that etcd is back.
_CHANNEL_OPTIONS: Final = {
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
    # A new connection does not inherit an old channel's backoff: it tries at once.
    "grpc.use_local_subchannel_pool": 1,
}


@dataclass(frozen=True, slots=True)
class EtcdURL:
    """An ``etcd://`` URL taken apart; ``redacted`` is it with the password masked."""

    endpoints: list[tuple[str, int]]
    prefix: str | None = None
    user: str | None = None
    password: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    redacted: str = "etcd://"
    options: dict[str, str] = field(default_factory=dict)


def parse_url(url: str) -> EtcdURL:
    """Take an ``etcd://`` URL apart; a malformed one raises ``ValueError`` saying why."""
    split = urlsplit(url)
    if split.scheme.lower() != "etcd":
        raise ValueError(f"an etcd URL starts with etcd://, not {url.partition('://')[0]}://")
    userinfo, _, hosts = split.netloc.rpartition("@")
    user = password = None
    if userinfo:
        name, colon, secret = userinfo.partition(":")
        if not name or not colon:
            raise ValueError("an etcd URL with credentials needs both user and password")
        user, password = unquote(name), unquote(secret)
    redacted_netloc = f"{quote(user or '')}:***@{hosts}" if userinfo else hosts
    query = dict(parse_qsl(split.query, keep_blank_values=True))
    shown_query = f"?{split.query}" if split.query else ""  # a password is never in it
    redacted = f"etcd://{redacted_netloc}{split.path}{shown_query}"
    if split.path not in ("", "/"):
        raise ValueError(
            f"an etcd URL has no path ({redacted!r}); give the key prefix as ?prefix={split.path}"
        )
    endpoints = [_endpoint(host, redacted) for host in hosts.split(",")] if hosts else []
    timeout = DEFAULT_TIMEOUT
    if "timeout" in query:
        try:
            timeout = float(query.pop("timeout"))
        except ValueError:
            timeout = math.nan
        if not timeout > 0 or math.isinf(timeout):
            raise ValueError(f"timeout in {redacted!r} must be a positive number of seconds")
    prefix = query.pop("prefix", None)
    if prefix == "":
        raise ValueError(f"prefix in {redacted!r} must not be empty")
    return EtcdURL(
        endpoints=endpoints or [("127.0.0.1", DEFAULT_PORT)],
        prefix=prefix,
        user=user,
        password=password,
        timeout=timeout,
        redacted=redacted,
        options=query,
    )


async def connect(url: str | EtcdURL) -> aetcd.Client:
    """A client on the first host of ``url`` that answers, or ``ServiceUnavailable``."""
    parsed = parse_url(url) if isinstance(url, str) else url
    failures = []
    for host, port in parsed.endpoints:
        client = aetcd.Client(
            host=f"[{host}]" if ":" in host else host,  # aetcd joins host and port with ':'
            port=port,
            username=parsed.user,
            password=parsed.password,
            timeout=parsed.timeout,
            options=dict(_CHANNEL_OPTIONS),
            connect_wait_timeout=parsed.timeout,
        )
        try:
            await client.get(b"\0")  # a read answers only once the host serves requests
        except aetcd.ClientError as exc:
            await client.close()
            failures.append(f"{_address(host, port)}: {_reason(exc)}")
            continue
        return client
    raise ServiceUnavailable(f"etcd at {parsed.redacted} is unreachable ({'; '.join(failures)})")


def _endpoint(text: str, redacted: str) -> tuple[str, int]:
    host, port = text, DEFAULT_PORT
    if text.startswith("["):  # [::1]:2379
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad host {text!r} in {redacted!r}")
            port = _port(rest[1:], text, redacted)
    elif ":" in text:
        host, _, digits = text.rpartition(":")
        port = _port(digits, text, redacted)
    if not host:
        raise ValueError(f"empty host in {redacted!r}")
    return host, port


def _port(digits: str, text: str, redacted: str) -> int:
    if not digits.isdigit() or not 0 < int(digits) < 65536:
        raise ValueError(f"bad port in {text!r} of {redacted!r}")
    return int(digits)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reason(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


def raise_if_cancelled() -> None:
    """Raise the cancellation of this task that an await inside aetcd swallowed.

    aetcd waits with ``asyncio.wait_for``, which on Python 3.11 returns the result when the
    task is cancelled just as the result arrives; the task would then go on (a watch would
    wait for events forever) while whoever cancelled it waits for it to end.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
