"""``http://``: the embedded broker, the default, which needs no server.

Subscribers receive inside their own app, at ``POST /_micro/broker/<topic>``
(``asgi_micro.broker.inbox``), and say what they subscribe to in their registry record
(``asgi_micro.broker.directory``). A publisher finds them there, writes each event with the
copies it owes (one per broadcast subscriber, one per queue group) to a durable outbox
(``asgi_micro.broker.outbox``: SQLite under ``.micro/``) before ``publish`` returns, and its
sender delivers each copy until a subscriber's handler took it (``asgi_micro.broker.sender``)::

    orders-1: publish("user.created")
      │ (1) targets, from the registry: audit-1, audit-2 (broadcast), queue group "greeter"
      │ (2) event and copies written to .micro/outbox-orders.db: publish returns
      └─(3) sender: POST /_micro/broker/user.created?node=...
            ├──> audit-1                         200: handled, the copy is deleted
            ├──> audit-2                         503 + delay: failed, sent again after it
            └──> ?queue=greeter ──> one of greeter-1, greeter-2 (another one after a failure)

What a publisher accepted survives it: a publisher started again in the same directory takes
up the outbox it left. A subscriber that is down gets its copies when it is back (a queue
group waits for any member; a broadcast copy waits while its node is registered). Targets are
fixed when the event is published: a subscriber that comes later does not get it, and a queue
group, once seen, is remembered (in the outbox too) for ``max_age`` seconds, so events for a
group whose members are all down wait for the next member. A copy still undelivered after
``max_age`` is given up with a warning: a queue group's is dead-lettered to ``<topic>.dead``.
Subscribers drop an event they handled in the last ``dedup_window`` seconds.

A publisher learns of a subscriber through the registry, so an event published in the moment
before the registry told it (over mDNS, milliseconds on one host) goes without it; a node in
the same process is known at once.

URL options, all optional: ``http://?outbox=path.db`` (the outbox file; default
``<dir>/outbox-<service>.db``), ``dir=`` (default ``.micro``), ``max_age=`` (seconds, default a
day), ``timeout=`` (for one delivery, handler included; default 60), ``flush=`` (seconds
``stop`` goes on delivering what is due; default 5), ``dedup_window=`` (600),
``dedup_size=`` (100000), ``max_in_flight=`` (deliveries at once, 256), ``refresh=`` (seconds
between full registry listings, 30), ``sync=`` (``full``: a publish is on disk when it returns;
``normal``: it survives the process, not a power loss, and costs a third as much).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Coroutine, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, Self, runtime_checkable
from urllib.parse import parse_qs, urlsplit

from .. import registry as registry_module
from ..client.http import HTTPTransport
from ..errors import ServiceUnavailable
from ..registry import Node, Registry
from ..registry import Service as ServiceRecord
from ..types import ASGIApp
from .base import Broker, Redelivery, Subscription, check_topic
from .directory import Directory, advertise, announce
from .inbox import INBOX_PREFIX, Inbox

if TYPE_CHECKING:
    from ..plugins import Parts
    from .outbox import Outbox
    from .sender import Sender

__all__ = ["DEFAULT_MAX_AGE", "Announcer", "BrokerHost", "Embeddable", "HTTPBroker"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_AGE: Final = 24 * 3600.0
_OPTIONS: Final = {
    "outbox": str,
    "dir": str,
    "max_age": float,
    "timeout": float,
    "flush": float,
    "dedup_window": float,
    "dedup_size": int,
    "max_in_flight": int,
    "refresh": float,
    "sync": str,
}
_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")
_TRANSPORT_HEADERS = frozenset(
    {"host", "content-length", "connection", "transfer-encoding", "expect", "te", "upgrade"}
)
_READY_TIMEOUT = 10.0  # for the registry's first answer, before a publish gives up
_REGISTER_TIMEOUT = 10.0  # for the node's first registration, before a subscribe goes on
_UPKEEP = 60.0


class Announcer(Protocol):
    """What the broker needs of the part that registers its node (``asgi_micro.registrar``)."""

    @property
    def registry(self) -> Registry: ...

    @property
    def registered(self) -> asyncio.Event: ...

    def advertise(self, source: Callable[[], Mapping[str, str]]) -> None: ...

    async def refresh(self) -> None: ...

    def record(self) -> ServiceRecord: ...


class BrokerHost(Protocol):
    """The service whose app receives the broker's events."""

    @property
    def name(self) -> str: ...

    @property
    def id(self) -> str: ...

    @property
    def status(self) -> str: ...

    @property
    def draining(self) -> bool: ...

    @property
    def max_message_size(self) -> int: ...

    @property
    def app(self) -> ASGIApp | None: ...

    @property
    def registrar(self) -> Announcer: ...

    @property
    def internal_apps(self) -> MutableMapping[str, ASGIApp]: ...

    def trusts_node(self, service: str, node: Node) -> bool:
        """Whether ``node``'s registration is trusted to be a node of ``service``."""
        ...


@runtime_checkable
class Embeddable(Protocol):
    """A broker that receives inside its service's app: the service calls ``embed``."""

    def embed(self, host: BrokerHost) -> None: ...


class HTTPBroker(Broker):
    """The embedded broker (see the module's docstring). ``registry`` is where subscribers
    are found: the service's (``from_url`` takes it from ``parts``), else one from
    ``MICRO_REGISTRY`` that the broker starts and stops itself. ``source`` names the service,
    which names the outbox file."""

    def __init__(
        self,
        *,
        registry: Registry | None = None,
        source: str = "",
        outbox: str | Path | None = None,
        directory: str | Path = ".micro",
        max_age: float = DEFAULT_MAX_AGE,
        timeout: float = 60.0,
        flush: float = 5.0,
        dedup_window: float = 600.0,
        dedup_size: int = 100_000,
        max_in_flight: int = 256,
        refresh: float = 30.0,
        sync: str = "full",
        url: str = "http://",
    ) -> None:
        for name, value in (("max_age", max_age), ("timeout", timeout), ("refresh", refresh)):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if flush < 0 or dedup_window < 0 or dedup_size < 0 or max_in_flight < 1:
            raise ValueError("flush, dedup_window and dedup_size >= 0, max_in_flight >= 1")
        if sync not in ("full", "normal"):
            raise ValueError(f"sync is full or normal, got {sync!r}")
        self.sync = sync
        self.url = url
        self.source = source
        self._owns_registry = registry is None
        if registry is None:
            from ..settings import Settings

            registry = registry_module.from_url(Settings().registry)
        self.registry = registry
        self.outbox_path = Path(outbox) if outbox is not None else None
        self.directory_path = Path(directory)
        self.max_age = max_age
        self.timeout = timeout
        self.flush = flush
        self.max_in_flight = max_in_flight
        self.refresh = refresh
        self._host: BrokerHost | None = None
        self._inbox = Inbox(
            node_id=lambda: self._host.id if self._host is not None else "",
            error_id=lambda: self._host.name if self._host is not None else self.source,
            max_body=lambda: self._host.max_message_size if self._host is not None else 0,
            draining=lambda: self._host is not None and self._host.draining,
            dedup_window=dedup_window,
            dedup_size=dedup_size,
        )
        self._lock = asyncio.Lock()  # start and stop
        self._opening = asyncio.Lock()  # the outbox, on the first publish
        self._started = self._stopping = False
        self._transport: HTTPTransport | None = None
        self._live: _Publishing | None = None
        self._chores: set[asyncio.Task[None]] = set()

    @classmethod
    def from_url(cls, url: str, *, parts: Parts | None = None) -> Self:
        """``http://``, or ``http://?outbox=...&max_age=...`` (see the module's docstring)."""
        split = urlsplit(url)
        if split.scheme.lower() != "http":
            raise ValueError(f"not an http:// URL: {url!r}")
        if split.netloc or split.path not in ("", "/") or split.fragment:
            raise ValueError(
                "http:// is the embedded broker, which has no server to name (subscribers "
                f"receive in their own apps): use http:// or http://?option=..., got {url!r}"
            )
        query = parse_qs(split.query, strict_parsing=bool(split.query))
        options = {key: values[-1] for key, values in query.items()}
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise ValueError(f"unknown http:// option(s) {unknown}; expected {sorted(_OPTIONS)}")
        typed: dict[str, object] = {}
        for key, value in options.items():
            try:
                typed[key] = _OPTIONS[key](value)
            except ValueError:
                raise ValueError(f"http:// option {key} got {value!r}") from None
        if "dir" in typed:
            typed["directory"] = typed.pop("dir")
        parts_registry = parts.registry if parts is not None else None
        return cls(
            registry=parts_registry,
            source=parts.service if parts is not None else "",
            url=url,
            **typed,  # type: ignore[arg-type]
        )

    # -- embedding ------------------------------------------------------------------------------

    def embed(self, host: BrokerHost) -> None:
        """Receive in ``host``'s app: its inbox at ``/_micro/broker/``, and its subscriptions
        in its node's registry record."""
        if self._host is not None:
            if self._host is host:
                return
            raise ValueError(f"{self!r} receives for {self._host.name} already")
        self._host = host
        host.registrar.advertise(self._advertised)
        host.internal_apps[INBOX_PREFIX] = self._inbox

    def _advertised(self) -> dict[str, str]:
        subscriptions = self._inbox.advertised()
        return advertise(subscriptions) if subscriptions else {}

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        async with self._lock:
            if self._started:
                return
            if self._owns_registry:
                await self.registry.start()
            self._transport = HTTPTransport(max_connections_per_host=64)
            self._started = True
            outbox = self._new_outbox()
            if outbox.claim(existing=True):  # one a run before left: what it holds goes on
                await self._open(outbox)

    async def stop(self) -> None:
        async with self._lock:
            if not self._started:
                return
            for subscription in self._inbox.subscriptions:
                await self.unsubscribe(subscription)
            async with self._opening:
                live, self._live = self._live, None
                self._stopping = True
            if live is not None:
                await live.sender.stop(flush=self.flush)
            chores = [*self._chores, *([live.upkeep] if live is not None else [])]
            for chore in chores:
                chore.cancel()
            await asyncio.gather(*chores, return_exceptions=True)
            if live is not None:
                await live.directory.stop()
                await live.outbox.close()
            if self._transport is not None:
                await self._transport.aclose()
                self._transport = None
            if self._owns_registry:
                await self.registry.stop()
            self._started = self._stopping = False

    def _new_outbox(self) -> Outbox:
        from .outbox import Outbox, candidates

        if self.outbox_path is not None:
            return Outbox(candidates(self.outbox_path, alternatives=False), synchronous=self.sync)
        name = re.sub(r"[^A-Za-z0-9._-]", "_", self.source) or "broker"
        default = self.directory_path / f"outbox-{name}.db"
        return Outbox(candidates(default, alternatives=True), synchronous=self.sync)

    async def _open(self, outbox: Outbox | None = None) -> _Publishing:
        """Open the outbox and start sending from it: on the first publish, or at start when
        a run before left one."""
        from .sender import Sender

        async with self._opening:
            if self._live is not None:
                return self._live
            if not self._started or self._stopping or self._transport is None:
                raise RuntimeError(f"{self!r} is not started")
            outbox = outbox or self._new_outbox()
            await outbox.open()
            try:
                directory = Directory(
                    self.registry,
                    refresh=self.refresh,
                    on_join=self._joined,
                    trusts=self._host.trusts_node if self._host is not None else None,
                )
                directory.remember(await outbox.groups())
            except BaseException:
                await outbox.close()
                raise
            directory.start()
            sender = Sender(
                outbox,
                directory,
                self._transport,
                dead_letter=self.publish_raw,
                max_age=self.max_age,
                timeout=self.timeout,
                max_in_flight=self.max_in_flight,
                backoff=Redelivery(initial=0.1, maximum=10.0),
            )
            upkeep = asyncio.create_task(
                self._keep(outbox, directory, sender), name="asgi-micro broker upkeep"
            )
            self._live = _Publishing(outbox, directory, sender, upkeep)
            logger.info("broker: outbox %s", outbox.path)
            return self._live

    async def _keep(self, outbox: Outbox, directory: Directory, sender: Sender) -> None:
        """Start sending once the registry answered; then, now and then, record the queue
        groups seen and forget those not seen for ``max_age``."""
        while not await directory.ready(_READY_TIMEOUT):
            logger.warning("broker: %s has not answered yet; not sending", self.registry)
        sender.start()
        while True:
            try:
                before = time.time() - self.max_age
                await outbox.remember([(t, q, seen) for (t, q), seen in directory.groups.items()])
                await outbox.forget(before)
                for key, seen in list(directory.groups.items()):
                    if seen < before:
                        del directory.groups[key]
            except Exception:
                logger.warning("broker: could not record the queue groups", exc_info=True)
            await asyncio.sleep(_UPKEEP)

    def _joined(self, topic: str, queue: str | None) -> None:
        live = self._live
        if live is not None and queue is not None:
            live.sender.joined(topic, queue)
            self._chore(live.outbox.remember([(topic, queue, time.time())]))

    def _chore(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    # -- publishing -----------------------------------------------------------------------------

    async def publish_raw(self, topic: str, body: bytes, headers: Mapping[str, str]) -> None:
        """Write the event and the copies it owes to the outbox; returns once committed."""
        from .outbox import NewEvent, Target

        check_topic(topic)
        if not self._started:
            raise RuntimeError(f"{self!r} is not started")
        checked = _checked(headers)
        live = self._live or await self._open()
        directory = live.directory
        if not await directory.ready(_READY_TIMEOUT):
            raise ServiceUnavailable(
                f"{self.registry} has not answered: cannot tell who subscribes to {topic}",
                id=self.source,
            )
        targets = [Target(node=member.id) for member in directory.broadcast(topic)]
        since = time.time() - self.max_age
        targets += [Target(queue=queue) for queue in directory.queues(topic, since=since)]
        if not targets:
            logger.debug(
                "broker: no subscriber to %s; event %s goes nowhere", topic, checked["ce-id"]
            )
            return
        await live.outbox.add([NewEvent(topic, checked, bytes(body), time.time(), tuple(targets))])
        live.sender.wake()

    async def pending(self) -> int:
        """How many copies of events wait in the outbox for a subscriber to take them."""
        live = self._live
        return 0 if live is None else await live.outbox.pending()

    # -- subscribing ----------------------------------------------------------------------------

    async def attach(self, subscription: Subscription) -> None:
        if self._host is None or self._host.app is None:
            raise RuntimeError(
                "the http:// broker delivers events to a served app: subscribe through a "
                "Service that serves one (service.subscribe), or use another broker"
            )
        self._inbox.add(subscription)
        try:
            await self._advertise()
        except BaseException:
            self._inbox.close(subscription, left=False)
            raise

    async def unsubscribe(self, subscription: Subscription) -> None:
        if not self._inbox.close(subscription):
            return
        try:
            await self._advertise()
        except Exception:  # the next heartbeat registers the record without it
            logger.warning("broker: could not advertise the end of a subscription", exc_info=True)
        await subscription.drain()

    async def _advertise(self) -> None:
        """Register the node's record again, now that its subscriptions changed."""
        host = self._host
        if host is None or host.draining:
            return
        registrar = host.registrar
        if not registrar.registered.is_set():
            if host.status != "serving":
                return  # starting: the first registration carries the subscriptions
            try:
                async with asyncio.timeout(_REGISTER_TIMEOUT):
                    await registrar.registered.wait()
            except TimeoutError:
                logger.warning("broker: %s is not registered yet; subscribing anyway", host.name)
                return
        await registrar.refresh()
        announce(registrar.registry, registrar.record())


@dataclass(frozen=True, slots=True)
class _Publishing:
    """What a broker runs once it publishes: the outbox, the directory, the sender."""

    outbox: Outbox
    directory: Directory
    sender: Sender
    upkeep: asyncio.Task[None]


def _checked(headers: Mapping[str, str]) -> dict[str, str]:
    """The event's headers as they travel: lower-case names that HTTP carries, values
    without line breaks."""
    checked: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        if (
            not _HEADER_NAME.fullmatch(lower)
            or lower in _TRANSPORT_HEADERS
            or lower.startswith("micro-broker-")
        ):
            raise ValueError(f"an event header cannot be named {name!r}")
        if "\r" in value or "\n" in value or "\0" in value:
            raise ValueError(f"event header {name} has a line break in its value")
        checked[lower] = value
    if not checked.get("ce-id"):
        raise ValueError("an event needs a ce-id header")
    return checked
