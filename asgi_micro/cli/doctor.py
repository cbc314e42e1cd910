"""``asgi-micro doctor``: can this machine reach every part a service here would use?

Each part is built from the URL a service would take (the flag, else ``MICRO_<PART>``, else
the embedded default), started within ``--timeout`` seconds, made to do one cheap real thing,
and stopped, in the order a service starts them (the store and sync get the registry and the
store, as a service's do):

    registry   list the services (mDNS: and on which interfaces multicast was joined)
    store      write, read and delete a record of its own (it expires within a minute anyway)
    sync       acquire and release a lock of its own
    broker     connect; with --round-trip, publish an event on a topic of its own and receive it
    database   connect and run SELECT 1
    auth       start (a jwt:// key ring is read when first needed, so nothing is written)

A table (or with ``--json`` one JSON object) says for each part its URL without credentials,
the result, how long it took and what to do about a failure. Exit status 0 when every part was
reached, 1 otherwise, 2 for bad usage.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import sqlalchemy as sa
import typer
from rich.table import Column, Table
from rich.text import Text

from .. import auth as auth_module
from .. import broker as broker_module
from .. import data as data_module
from .. import registry as registry_module
from .. import store as store_module
from .. import sync as sync_module
from ..broker import Broker, Event
from ..config.paths import is_secret
from ..data import Database
from ..errors import MicroError
from ..plugins import MissingDependency, Parts
from ..registry import Registry
from ..registry.mdns import MDNSRegistry
from ..registry.multicast import ALTERNATIVE
from ..store import Store
from ..sync import Sync
from .common import JsonOption, RegistryOption, console, print_json
from .events import BrokerOption
from .store import StoreOption

__all__ = ["Check", "doctor", "redacted"]

SERVICE = "asgi-micro-doctor"
"""The service name the parts are built for (the http:// broker's outbox is named after it)."""

SyncOption = Annotated[
    str,
    typer.Option(
        "--sync",
        envvar="MICRO_SYNC",
        help="Sync URL: memory://, store://, redis://127.0.0.1:6379, etcd://127.0.0.1:2379.",
    ),
]
DatabaseOption = Annotated[
    str,
    typer.Option(
        "--database",
        envvar="MICRO_DATABASE",
        help="Database URL for SQLModel tables: sqlite:///path.db, postgresql://user@host/db.",
    ),
]
AuthUrlOption = Annotated[
    str,
    typer.Option("--auth", envvar="MICRO_AUTH", help="Auth URL: jwt://, noop://."),
]


@dataclass(frozen=True, slots=True)
class Check:
    """What ``doctor`` found of one part."""

    part: str
    url: str
    reached: bool
    result: str
    seconds: float
    advice: str = ""


def doctor(
    registry: RegistryOption = registry_module.DEFAULT_URL,
    store: StoreOption = store_module.DEFAULT_URL,
    sync: SyncOption = sync_module.DEFAULT_URL,
    broker: BrokerOption = broker_module.DEFAULT_URL,
    database: DatabaseOption = data_module.DEFAULT_URL,
    auth: AuthUrlOption = auth_module.DEFAULT_URL,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.1, help="Seconds each part may take.")
    ] = 5.0,
    round_trip: Annotated[
        bool,
        typer.Option(
            "--round-trip",
            help="Publish an event on a private topic and receive it (on Redis and NATS the "
            "event stays in the stream until trimmed or aged out).",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Check that the registry, store, sync, broker, database and auth in use are reachable."""
    urls = {
        "registry": registry,
        "store": store,
        "sync": sync,
        "broker": broker,
        "database": database,
        "auth": auth or auth_module.DEFAULT_URL,
    }
    checks = asyncio.run(_examine(urls, timeout=timeout, round_trip=round_trip))
    reached = all(check.reached for check in checks)
    if as_json:
        print_json({"reached": reached, "parts": [asdict(check) for check in checks]})
    else:
        _print_table(checks)
    if not reached:
        raise typer.Exit(1)


async def _examine(urls: dict[str, str], *, timeout: float, round_trip: bool) -> list[Check]:
    """Check every part, keeping the registry and the store running while the parts built
    on them are checked, as a service would."""
    checks: list[Check] = []
    async with contextlib.AsyncExitStack() as running:

        async def check(
            part: str,
            build: Callable[..., Any],
            probe: Callable[[Any], Awaitable[str]],
            parts: Parts,
            *,
            keep: bool = False,
        ) -> Any:
            found, backend = await _check(
                part, urls[part], build, probe, parts, timeout=timeout, keep=keep
            )
            checks.append(found)
            if keep and backend is not None:
                running.push_async_callback(_stop, backend, timeout)
            return backend

        registry = await check(
            "registry", registry_module.from_url, _list_services, Parts(service=SERVICE), keep=True
        )
        with_registry = Parts(service=SERVICE, registry=registry)
        store = await check("store", store_module.from_url, _write_read_delete, with_registry)
        with_store = Parts(service=SERVICE, registry=registry, store=store)
        await check("sync", sync_module.from_url, _lock_and_release, with_store)
        await check(
            "broker", broker_module.from_url, _round_trip if round_trip else _connect, with_store
        )
        await check("database", _database, _select_one, Parts(service=SERVICE))
        await check("auth", auth_module.from_url, _started, with_store)
    return checks


async def _check(
    part: str,
    url: str,
    build: Callable[..., Any],
    probe: Callable[[Any], Awaitable[str]],
    parts: Parts,
    *,
    timeout: float,
    keep: bool,
) -> tuple[Check, Any]:
    """Build, start, probe and (unless ``keep``, and it worked) stop one part. Returns what
    was found and the started backend, or ``None`` when it could not be built or started."""
    shown = redacted(url)
    began = time.perf_counter()

    def found(reached: bool, result: str, advice: str = "") -> Check:
        return Check(part, shown, reached, result, round(time.perf_counter() - began, 3), advice)

    try:
        backend = build(url, parts=parts)
    except MissingDependency as exc:
        install = str(exc).rpartition(": ")[2]
        return found(False, f"not installed: {exc}", install), None
    except ValueError as exc:
        return found(False, f"bad URL: {exc}", f"fix MICRO_{part.upper()} or --{part}"), None
    try:
        async with asyncio.timeout(timeout):
            await backend.start()
            result = await probe(backend)
    except TimeoutError:
        check = found(False, f"no answer within {timeout:g}s", _remedy(part, url))
    except MissingDependency as exc:
        check = found(False, f"not installed: {exc}", str(exc).rpartition(": ")[2])
    except Exception as exc:  # whatever a backend raises, the doctor reports it
        check = found(False, _describe(exc), _remedy(part, url))
    else:
        check = found(True, result, _caveat(part, backend))
        if keep:
            return check, backend
    await _stop(backend, timeout)
    return check, None


async def _stop(backend: Any, timeout: float) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout):
            await backend.stop()


# -- the probes -------------------------------------------------------------------------------


async def _list_services(registry: Registry) -> str:
    services = await registry.list_services()
    result = f"{len(services)} service(s) listed"
    if isinstance(registry, MDNSRegistry):
        joined = ", ".join(registry.joined) or "no interface"
        result += f"; multicast joined on {joined}"
    return result


async def _write_read_delete(store: Store) -> str:
    key = f"{SERVICE}/{uuid.uuid4().hex}"
    value = uuid.uuid4().bytes
    try:
        await store.write(key, value, ttl=60.0)
        [record] = await store.read(key)
        if record.value != value:
            raise RuntimeError(f"the record read back differs from the one written at {key!r}")
    finally:
        await store.delete(key)
    return "wrote, read and deleted a record"


async def _lock_and_release(sync: Sync) -> str:
    lease = await sync.acquire(f"{SERVICE}.{uuid.uuid4().hex}", ttl=10.0, wait=0)
    await sync.release(lease)
    return f"acquired and released a lock (fencing token {lease.token})"


async def _connect(broker: Broker) -> str:
    return "connected" if urlsplit(broker.url).scheme != "http" else "started (no server to reach)"


async def _round_trip(broker: Broker) -> str:
    if urlsplit(broker.url).scheme == "http":
        return "started; no round trip: its subscribers receive in their own served apps"
    topic = f"asgi-micro.doctor.{uuid.uuid4().hex}"
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def handle(event: Event) -> None:
        if not received.done():
            received.set_result(event.body)

    subscription = await broker.subscribe(topic, handle)
    try:
        body = uuid.uuid4().hex.encode()
        await broker.publish(topic, body, content_type="text/plain")
        if await received != body:
            raise RuntimeError(f"the event received on {topic} is not the one published")
    finally:
        await broker.unsubscribe(subscription)
    return "published and received an event"


def _database(url: str, *, parts: Parts) -> Database:
    return Database.from_url(url, parts=parts, metadata=sa.MetaData(), create_tables=False)


async def _select_one(database: Database) -> str:
    async with database.engine.connect() as connection:
        await connection.execute(sa.text("SELECT 1"))
    return "connected (SELECT 1)"


async def _started(_: object) -> str:
    return "started"


# -- telling ------------------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    if isinstance(exc, MicroError):
        return exc.detail
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _remedy(part: str, url: str) -> str:
    """What to do about a part that failed to start or to do its one thing."""
    split = urlsplit(url)
    scheme = split.scheme.lower()
    if part == "registry" and scheme == "mdns":
        return ALTERNATIVE
    if split.hostname:
        where = f"{split.hostname}:{split.port}" if split.port else split.hostname
        return f"is the {scheme} server running at {where}? check MICRO_{part.upper()}"
    return f"check MICRO_{part.upper()} (or --{part})"


def _caveat(part: str, backend: Any) -> str:
    """What to know about a part that works but may not be what is meant."""
    if isinstance(backend, MDNSRegistry):
        opened = backend.interfaces or []
        if opened and all(ipaddress.IPv4Address(address).is_loopback for address in opened):
            return "loopback only: services on other machines are not seen (mdns://0.0.0.0)"
    if urlsplit(backend.url).scheme == "memory":
        return f"memory:// lives in one process: services do not share this {part}"
    return ""


def _print_table(checks: list[Check]) -> None:
    # Folded rather than cut short: people copy URLs and messages out of this table.
    table = Table(
        "part",
        Column("URL", overflow="fold"),
        Column("result", overflow="fold"),
        Column("time", justify="right", no_wrap=True),
        Column("advice", overflow="fold"),
    )
    for check in checks:
        style = "green" if check.reached else "red"
        table.add_row(
            check.part,
            check.url,
            Text(check.result, style),
            f"{check.seconds * 1000:.0f} ms",
            check.advice,
        )
    console.print(table)
    failed = [check.part for check in checks if not check.reached]
    console.print(
        f"not reached: {', '.join(failed)}" if failed else "every part was reached",
        style="red" if failed else "green",
    )


def redacted(url: str) -> str:
    """``url`` as it may be shown: passwords and tokens in it (``user:***@``, a NATS token
    as ``***@``, query values named like secrets such as ``password`` or ``token``) replaced
    by ``***``."""
    split = urlsplit(url)
    netloc = _PASSWORD.sub(r"\1:***@", split.netloc)
    if split.scheme.lower() in ("nats", "tls"):
        netloc = _TOKEN.sub(r"\1***@", netloc)
    query = urlencode(
        [
            (key, "***" if is_secret(key, value) else value)
            for key, value in parse_qsl(split.query, keep_blank_values=True)
        ],
        safe="*,/:",
    )
    if (netloc, query) == (split.netloc, split.query):
        return url
    shown = f"{split.scheme}://{netloc}{split.path}"
    return shown + (f"?{query}" if query else "") + (f"#{split.fragment}" if split.fragment else "")


_PASSWORD = re.compile(r"([^,@/:]*):[^,@/]*@")  # user:password@, in each of nats://a,b
_TOKEN = re.compile(r"(^|,)[^,@/:*]+@")  # nats://token@host
