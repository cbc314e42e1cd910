"""Discovery over multicast DNS (zeroconf): the embedded default, no server to run.

Every node is one DNS-SD instance of ``_micro._tcp.local.`` (``_<domain>._tcp.local.`` in
another domain, ``mdns://?domain=staging``: registries see only the nodes of their own domain,
so separate systems, or test runs, share a machine without seeing each other's nodes). Its SRV
and A records give the
address, its TXT record the service name, version, node id, metadata, a revision hash and, when
they fit, the endpoints. What does not fit is fetched from the node itself at
``GET http://<node address>/_micro/registry``. Records carry the registration's TTL: a node that
stops sends goodbyes and vanishes at once, one that dies vanishes when its TTL runs out.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import functools
import hashlib
import ipaddress
import itertools
import logging
import math
import re
import zlib
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import orjson
from zeroconf import (
    DNSQuestionType,
    InterfaceChoice,
    IPVersion,
    ServiceStateChange,
    Zeroconf,
    current_time_millis,
)
from zeroconf._dns import DNSPointer, DNSText
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from ..errors import ServiceUnavailable
from . import multicast
from .base import Event, EventType, Node, Registry, Service

if TYPE_CHECKING:
    from ..plugins import Parts

__all__ = ["DEFAULT_DOMAIN", "DEFAULT_TTL", "REGISTRY_PATH", "SERVICE_TYPE", "MDNSRegistry"]

logger = logging.getLogger(__name__)

DEFAULT_DOMAIN = "micro"
SERVICE_TYPE = f"_{DEFAULT_DOMAIN}._tcp.local."
"""The DNS-SD service type of the default domain."""
_DOMAIN = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){0,14}")  # RFC 6335 service names
DEFAULT_TTL = 120.0  # RFC 6762's TTL for host records; used when register() gets ttl=None
REGISTRY_PATH = "/_micro/registry"  # where a node serves its own record, for what TXT cannot hold

# A node that multicast its records in the last second (each heartbeat does) must wait a second
# before it answers a query by multicast (RFC 6762 section 6): answers come 1.0-1.25 s late then.
_BROWSE_TIMEOUT = 1.5
# A lookup of one name ends when the name is heard of, so it can afford to wait longer for the
# late answer of a busy node (zeroconf's own ServiceInfo.request waits 3 s).
_LOOKUP_TIMEOUT = 3.0
_FETCH_TIMEOUT = 1.0
_FETCH_RETRY = 5.0  # seconds before a node whose fetch failed is asked again
_LOOPBACK = "127.0.0.1"
_ALL = "0.0.0.0"
_OPTIONS = ("interfaces", "timeout", "lookup_timeout", "fetch_timeout", "domain")
# RFC 6763 section 6.2 advises TXT records under 1300 bytes, so that with the PTR, SRV and A
# records an answer still fits one 1460-byte packet.
_TXT_BUDGET = 1300
_TXT_STRING_MAX = 255  # one length byte per key=value string
_ENDPOINT_CHUNK = 250
_LABEL_MAX = 63  # bytes in one DNS label: the instance name
_EXPIRY_SLACK = 0.05  # seconds past a record's expiry before looking again, so it has expired


@dataclass(frozen=True, slots=True)
class _Advert:
    """One node as its TXT record describes it."""

    text: bytes
    record: Service  # holds this node alone; shared through the decode cache, so copied out
    revision: str
    # What only the node can tell: "s" service metadata, "n" node metadata, "e" endpoints.
    missing: str


@dataclass(slots=True)
class _Fetch:
    """A node's own record, fetched once per revision; a failure is retried after a while."""

    revision: str
    task: asyncio.Task[Service | None]
    retry_at: float = math.inf


@dataclass(slots=True)
class _Registration:
    info: AsyncServiceInfo
    timer: asyncio.TimerHandle  # the lease's end, or the next keep-alive when ttl was None


class MDNSRegistry(Registry):
    """Services on this machine or LAN find each other by multicast DNS.

    ``interfaces`` are IPv4 addresses to run mDNS on (``["0.0.0.0"]`` for all of them); when
    left out they follow the first use: a registered node's address (a loopback node stays on
    loopback, another address adds loopback for local tools), or loopback alone for a pure client.
    A fresh registry lists what answers within ``browse_timeout`` seconds, and waits up to
    ``lookup_timeout`` seconds for a service looked up by name; fetching what a TXT record cannot
    hold from a node takes at most ``fetch_timeout`` seconds. ``domain`` (1 to 15
    lower-case letters, digits and inner hyphens) separates systems on one network: a registry
    sees the nodes of its own domain only.
    """

    def __init__(
        self,
        *,
        interfaces: Sequence[str] | None = None,
        browse_timeout: float = _BROWSE_TIMEOUT,
        lookup_timeout: float = _LOOKUP_TIMEOUT,
        fetch_timeout: float = _FETCH_TIMEOUT,
        domain: str = DEFAULT_DOMAIN,
    ) -> None:
        if browse_timeout < 0:
            raise ValueError(f"browse_timeout must be >= 0 seconds, got {browse_timeout}")
        if lookup_timeout < 0:
            raise ValueError(f"lookup_timeout must be >= 0 seconds, got {lookup_timeout}")
        if fetch_timeout <= 0:
            raise ValueError(f"fetch_timeout must be > 0 seconds, got {fetch_timeout}")
        if not _DOMAIN.fullmatch(domain):
            raise ValueError(
                "an mDNS domain is 1 to 15 lower-case letters, digits and hyphens (not at either "
                f"end, never two in a row), got {domain!r}"
            )
        self._configured = _check_interfaces(interfaces)
        self.browse_timeout = browse_timeout
        self.lookup_timeout = lookup_timeout
        self.fetch_timeout = fetch_timeout
        self.domain = domain
        self.service_type = f"_{domain}._tcp.local."
        self.url = _url(
            self._configured,
            {
                "timeout": (browse_timeout, _BROWSE_TIMEOUT),
                "lookup_timeout": (lookup_timeout, _LOOKUP_TIMEOUT),
                "fetch_timeout": (fetch_timeout, _FETCH_TIMEOUT),
            },
            domain,
        )
        self._zeroconf: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._interfaces: list[str] | None = None
        self._joined: list[str] = []
        self._opened_at = 0.0
        self._changed = asyncio.Event()
        self._registered: dict[str, _Registration] = {}  # node id -> what we announce
        self._nodes: dict[str, _Advert] = {}  # instance name -> last advert seen, for events
        self._expiry: dict[str, asyncio.TimerHandle] = {}  # instance name -> TTL check
        self._fetched: dict[str, _Fetch] = {}  # by node id
        self._watchers: set[tuple[str | None, asyncio.Queue[Event | None]]] = set()
        self._backlog: list[tuple[EventType, _Advert]] | None = None  # events waiting in order
        self._teller: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None

    @classmethod
    def from_url(cls, url: str, *, parts: Parts | None = None) -> MDNSRegistry:
        """``mdns://``, ``mdns://127.0.0.1``, ``mdns://0.0.0.0`` (all interfaces) or
        ``mdns://?interfaces=127.0.0.1,10.0.0.2&timeout=0.5&lookup_timeout=2&fetch_timeout=2``."""
        split = urlsplit(url)
        if split.scheme.lower() != "mdns":
            raise ValueError(f"not an mdns:// URL: {url!r}")
        if split.path not in ("", "/") or split.fragment or split.username or split.password:
            raise ValueError(f"mdns:// takes a host and ?options only, got {url!r}")
        if split.port is not None:
            raise ValueError(f"mdns:// takes no port (mDNS always uses 5353), got {url!r}")
        query = parse_qs(split.query, keep_blank_values=True, strict_parsing=bool(split.query))
        options = {key: values[-1] for key, values in query.items()}
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise ValueError(f"unknown mdns:// option(s) {unknown}; expected {list(_OPTIONS)}")
        if split.hostname and "interfaces" in options:
            raise ValueError(f"give interfaces as the host or as ?interfaces=, not both: {url!r}")
        if options.get("interfaces") == "":
            raise ValueError(f"mdns:// option interfaces is empty: {url!r}")
        listed = options.get("interfaces") or split.hostname
        return cls(
            interfaces=listed.split(",") if listed else None,
            browse_timeout=_seconds(options, "timeout", _BROWSE_TIMEOUT),
            lookup_timeout=_seconds(options, "lookup_timeout", _LOOKUP_TIMEOUT),
            fetch_timeout=_seconds(options, "fetch_timeout", _FETCH_TIMEOUT),
            domain=options.get("domain", DEFAULT_DOMAIN),
        )

    @property
    def interfaces(self) -> list[str] | None:
        """The IPv4 interfaces mDNS runs on (``["0.0.0.0"]`` is all); ``None`` until it opens."""
        return None if self._interfaces is None else list(self._interfaces)

    @property
    def joined(self) -> list[str]:
        """The IPv4 addresses whose interface joined the mDNS multicast group (for
        ``0.0.0.0``, each one found); empty until it opens."""
        return list(self._joined)

    def lookup_advice(self) -> str:
        """What to check when a lookup finds nothing, for the client's error message."""
        return multicast.advice(self.domain, self._interfaces or self._configured)

    async def start(self) -> None:
        if self._configured is not None:
            self._open(self._configured)

    async def stop(self) -> None:
        zeroconf, browser = self._zeroconf, self._browser
        if zeroconf is None or browser is None:
            return
        # Nothing may call back into a registry that is closing: browser and timers go first,
        # before anything awaits.
        self._zeroconf = self._browser = self._interfaces = None
        self._joined = []
        await browser.async_cancel()
        for registration in self._registered.values():
            registration.timer.cancel()
            _drop_pending_answers(zeroconf.zeroconf, registration.info)
        for timer in self._expiry.values():
            timer.cancel()
        self._registered.clear()
        self._nodes.clear()
        self._expiry.clear()
        if self._teller is not None:
            self._teller.cancel()
            self._teller, self._backlog = None, None
        fetches = [entry.task for entry in self._fetched.values()]
        self._fetched.clear()
        for task in fetches:
            task.cancel()
        await asyncio.gather(*fetches, return_exceptions=True)
        await zeroconf.async_close()  # sends the goodbyes of every node still registered
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        for _, queue in self._watchers:
            queue.put_nowait(None)

    # -- announcing ---------------------------------------------------------------------------

    async def register(self, service: Service, *, ttl: float | None = None) -> None:
        if ttl is not None and ttl <= 0:
            raise ValueError(f"ttl must be positive, got {ttl}")
        record_ttl = math.ceil(ttl or DEFAULT_TTL)  # DNS TTLs are whole seconds
        for node in service.nodes:
            info = _service_info(service, node, record_ttl, self.service_type)
            zeroconf = self._open(_interfaces_for(node.host))
            previous = self._registered.get(node.id)
            # Leased before the announcement is awaited: a heartbeat that comes meanwhile
            # refreshes the node instead of registering it twice.
            self._lease(node.id, info, ttl)
            await self._announce(zeroconf, node, info, previous)

    async def deregister(self, service: Service) -> None:
        for node in service.nodes:
            registration = self._registered.pop(node.id, None)
            if registration is not None:
                registration.timer.cancel()
                await self._goodbye(registration.info)

    async def _announce(
        self,
        zeroconf: AsyncZeroconf,
        node: Node,
        info: AsyncServiceInfo,
        previous: _Registration | None,
    ) -> None:
        if previous is None:
            self._warn_if_unreachable(node)
            # Node ids hold a uuid4, so probing for a name conflict (1.2 s) cannot find one.
            await (await zeroconf.async_register_service(info, cooperating_responders=True))
        elif previous.info.text == info.text and previous.info.host_ttl == info.host_ttl:
            # A heartbeat: one announcement extends the peers' caches; the heartbeats repeat it.
            zeroconf.zeroconf.async_send(zeroconf.zeroconf.generate_service_broadcast(info, None))
        else:
            _drop_pending_answers(zeroconf.zeroconf, previous.info)
            await (await zeroconf.async_update_service(info))

    def _lease(self, node_id: str, info: AsyncServiceInfo, ttl: float | None) -> None:
        previous = self._registered.get(node_id)
        if previous is not None:
            previous.timer.cancel()
        loop = asyncio.get_running_loop()
        if ttl is None:
            timer = loop.call_later(DEFAULT_TTL / 2, self._keep_alive, node_id)
        else:
            timer = loop.call_later(ttl, self._end_lease, node_id)
        self._registered[node_id] = _Registration(info, timer)

    def _keep_alive(self, node_id: str) -> None:
        """Re-announce a node registered without a TTL, so that it lives until deregistered."""
        registration = self._registered.get(node_id)
        if registration is not None and self._zeroconf is not None:
            zc = self._zeroconf.zeroconf
            zc.async_send(zc.generate_service_broadcast(registration.info, None))
            self._lease(node_id, registration.info, None)

    def _end_lease(self, node_id: str) -> None:
        """No heartbeat within the TTL: stop answering for the node, as its peers forget it."""
        registration = self._registered.pop(node_id, None)
        if registration is not None and self._zeroconf is not None:
            zc = self._zeroconf.zeroconf
            zc.registry.async_remove(registration.info)
            _drop_pending_answers(zc, registration.info)
            # One goodbye, sent now rather than zeroconf's three over 250 ms, so that a heartbeat
            # arriving just late registers the node again without goodbyes trailing behind it.
            zc.async_send(zc.generate_service_broadcast(registration.info, 0))

    async def _goodbye(self, info: AsyncServiceInfo) -> None:
        if self._zeroconf is not None:
            _drop_pending_answers(self._zeroconf.zeroconf, info)
            await (await self._zeroconf.async_unregister_service(info))

    def _warn_if_unreachable(self, node: Node) -> None:
        wanted = _interfaces_for(node.host)
        opened = self._interfaces or []
        if self._configured is None and opened != [_ALL] and not set(wanted) <= set(opened):
            logger.warning(
                "node %s (%s) is advertised on %s only: mDNS opened there on first use; "
                "register before looking up, or pass the interfaces (mdns://0.0.0.0 for all)",
                node.id,
                node.address,
                ", ".join(opened),
            )

    # -- looking up ---------------------------------------------------------------------------

    async def get_service(self, name: str) -> list[Service]:
        self._open([_LOOPBACK])
        await self._browse_until(
            lambda: any(a.record.name == name for a in self._live()), self.lookup_timeout
        )
        return await self._assemble([a for a in self._live() if a.record.name == name], fetch=True)

    async def list_services(self) -> list[Service]:
        self._open([_LOOPBACK])
        await self._browse_until(lambda: False, self.browse_timeout)
        services = await self._assemble(self._live(), fetch=False)
        return sorted(services, key=lambda service: (service.name, service.version))

    async def watch(self, service: str | None = None) -> AsyncGenerator[Event, None]:
        self._open([_LOOPBACK])
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        watcher = (service, queue)
        self._watchers.add(watcher)
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._watchers.discard(watcher)

    async def _browse_until(self, found: Callable[[], bool], window: float) -> None:
        """On a registry opened less than ``window`` seconds ago, wait for answers until
        ``found()`` or the end of that window."""
        loop = asyncio.get_running_loop()
        while not found():
            remaining = self._opened_at + window - loop.time()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._changed.wait()

    def _live(self) -> list[_Advert]:
        """The adverts whose TXT record has not expired, read from zeroconf's cache each time
        because a heartbeat extends a record without telling any listener."""
        adverts = []
        for instance in self._nodes:
            text = self._newest_text(instance)
            advert = _decode_txt(text.text) if text is not None else None
            if advert is not None:
                adverts.append(advert)
        return adverts

    async def _assemble(self, adverts: list[_Advert], *, fetch: bool) -> list[Service]:
        versions: dict[tuple[str, str], list[_Advert]] = {}
        for advert in adverts:
            versions.setdefault((advert.record.name, advert.record.version), []).append(advert)
        return list(await asyncio.gather(*(self._version(v, fetch) for v in versions.values())))

    async def _version(self, adverts: list[_Advert], fetch: bool) -> Service:
        """One version's record: the newest node describes it, every node is listed."""
        newest = adverts[-1]
        records = await asyncio.gather(
            *(self._complete(advert, fetch=fetch, whole=advert is newest) for advert in adverts)
        )
        service = records[-1]
        service.nodes = [record.nodes[0] for record in records]
        return service

    async def _complete(self, advert: _Advert, *, fetch: bool, whole: bool) -> Service:
        """A copy of the advert's record, with what its TXT left out fetched from the node:
        everything for the node that describes the version, node metadata for the others."""
        record = copy.deepcopy(advert.record)
        wanted = bool(advert.missing) if whole else "n" in advert.missing
        if not (fetch and wanted):
            return record
        fetched = await self._fetch(advert)
        return record if fetched is None else _merge(record, fetched)

    # -- fetching from the node ---------------------------------------------------------------

    async def _fetch(self, advert: _Advert) -> Service | None:
        """The node's own record, once per revision however many lookups ask at once."""
        node = advert.record.nodes[0]
        now = asyncio.get_running_loop().time()
        entry = self._fetched.get(node.id)
        if entry is None or entry.revision != advert.revision or entry.retry_at <= now:
            entry = _Fetch(advert.revision, asyncio.create_task(self._download(node)))
            self._fetched[node.id] = entry
        fetched = await asyncio.shield(entry.task)
        if fetched is None and entry.retry_at == math.inf:
            # Lookups meanwhile make do with the TXT record rather than each wait on the node.
            entry.retry_at = asyncio.get_running_loop().time() + _FETCH_RETRY
        return fetched

    async def _download(self, node: Node) -> Service | None:
        url = f"http://{node.address}{REGISTRY_PATH}"
        if self._http is None:
            # The node is local or on the LAN: an HTTP_PROXY from the environment must not apply.
            self._http = httpx.AsyncClient(trust_env=False, timeout=self.fetch_timeout)
        try:
            async with asyncio.timeout(self.fetch_timeout):
                response = await self._http.get(url)
            response.raise_for_status()
            return Service.from_dict(orjson.loads(response.content))
        except (TimeoutError, httpx.HTTPError, ValueError, LookupError, TypeError, AttributeError):
            # Whatever the node does, the lookup goes on with what its TXT record said.
            logger.debug("fetching %s failed", url, exc_info=True)
            return None

    # -- following the browser ----------------------------------------------------------------

    def _open(self, interfaces: list[str]) -> AsyncZeroconf:
        """Start zeroconf and the browser on first use; later calls return what is running."""
        if self._zeroconf is not None:
            return self._zeroconf
        chosen = self._configured or interfaces
        joined = multicast.join(chosen)
        try:
            zeroconf = AsyncZeroconf(
                interfaces=InterfaceChoice.All if chosen == [_ALL] else chosen,
                ip_version=IPVersion.V4Only,
            )
        except OSError as exc:
            raise ServiceUnavailable(
                f"mDNS cannot listen on UDP port 5353 of {', '.join(chosen)}: {exc}. "
                f"{multicast.ALTERNATIVE}"
            ) from exc
        self._zeroconf, self._interfaces, self._joined = zeroconf, chosen, joined
        self._opened_at = asyncio.get_running_loop().time()
        self._changed = asyncio.Event()
        # QM questions: a unicast (QU) answer to port 5353 reaches only one of the processes
        # that share the port on this host, maybe not the one that asked.
        self._browser = AsyncServiceBrowser(
            zeroconf.zeroconf,
            self.service_type,
            handlers=[self._on_browse],
            question_type=DNSQuestionType.QM,
        )
        return zeroconf

    def _on_browse(self, *, name: str, state_change: ServiceStateChange, **_: object) -> None:
        if state_change is ServiceStateChange.Removed:
            # A goodbye. A TXT record that an update superseded lingers in the cache for a
            # second (RFC 6762 section 10.2); it must not bring the node back.
            self._purge(name)
        self._reconcile(name)

    def _reconcile(self, instance: str) -> None:
        """Compare what the cache says of ``instance`` with what we last saw, tell watchers,
        and look again when its records expire."""
        text = self._newest_text(instance)
        advert = _decode_txt(text.text) if text is not None else None
        previous = self._nodes.pop(instance, None)
        timer = self._expiry.pop(instance, None)
        if timer is not None:
            timer.cancel()
        if text is None or advert is None:
            if previous is not None:
                self._forget(instance, previous)
                self._tell(EventType.DELETE, previous)
            return
        self._nodes[instance] = advert
        delay = (text.get_expiration_time(100) - current_time_millis()) / 1000 + _EXPIRY_SLACK
        self._expiry[instance] = asyncio.get_running_loop().call_later(
            delay, self._reconcile, instance
        )
        if previous is None:
            self._tell(EventType.CREATE, advert)
        elif previous.text != advert.text:
            self._tell(EventType.UPDATE, advert)
        self._changed.set()
        self._changed = asyncio.Event()

    def _newest_text(self, instance: str) -> DNSText | None:
        """The instance's live TXT record; after an update the old one lingers for a second."""
        assert self._zeroconf is not None
        now = current_time_millis()
        texts = [
            record
            for record in self._zeroconf.zeroconf.cache.async_entries_with_name(instance)
            if isinstance(record, DNSText) and not record.is_expired(now)
        ]
        return max(texts, key=lambda record: record.created, default=None)

    def _forget(self, instance: str, advert: _Advert) -> None:
        """Drop a node that is gone, and what was fetched from it."""
        self._purge(instance)
        entry = self._fetched.get(advert.record.nodes[0].id)
        if entry is not None and entry.task.done():
            del self._fetched[advert.record.nodes[0].id]

    def _purge(self, instance: str) -> None:
        """Remove an instance's records from zeroconf's cache. zeroconf keeps PTR records for at
        least 1125 s: left there, the node's next announcement would refresh it silently, with
        no browser event to tell watchers it is back."""
        assert self._zeroconf is not None
        cache = self._zeroconf.zeroconf.cache
        pointers = [
            record
            for record in cache.async_entries_with_name(self.service_type)
            if isinstance(record, DNSPointer) and record.alias.lower() == instance.lower()
        ]
        cache.async_remove_records([*pointers, *cache.async_entries_with_name(instance)])

    def _tell(self, type: EventType, advert: _Advert) -> None:
        """Tell the watchers, in the order things happened. A node whose TXT record left its
        metadata out (a registration's proof never fits) is told once that is fetched from the
        node, as a lookup would have it, and what comes after waits behind it."""
        if not self._watchers:
            return
        incomplete = type is not EventType.DELETE and "n" in advert.missing
        if self._backlog is None and not incomplete:
            self._notify(type, advert.record)
            return
        if self._backlog is None:
            self._backlog = []
            self._teller = asyncio.get_running_loop().create_task(
                self._tell_in_order(), name="asgi-micro mdns events"
            )
        self._backlog.append((type, advert))

    async def _tell_in_order(self) -> None:
        try:
            while self._backlog:
                type, advert = self._backlog.pop(0)
                record = advert.record
                if type is not EventType.DELETE and "n" in advert.missing:
                    record = await self._complete(advert, fetch=True, whole=False)
                self._notify(type, record)
        finally:
            self._backlog, self._teller = None, None

    def _notify(self, type: EventType, record: Service) -> None:
        for wanted, queue in self._watchers:
            if wanted is None or wanted == record.name:
                queue.put_nowait(Event(type, copy.deepcopy(record)))


def _drop_pending_answers(zc: Zeroconf, info: AsyncServiceInfo) -> None:
    """Withdraw a node's answers that zeroconf still holds back: it delays an answer by up to
    1.2 s (RFC 6762 section 6 rate limits), and one sent after a goodbye would bring the node
    back to life in every peer's cache until its TTL ran out (after an update, its old data)."""
    names = {info.key, info.server_key}
    for queue in (zc.out_queue, zc.out_delay_queue):
        for group in queue.queue:
            for record in list(group.answers):
                alias = record.alias.lower() if isinstance(record, DNSPointer) else None
                if record.key in names or alias == info.key:
                    del group.answers[record]


# -- the TXT record ---------------------------------------------------------------------------


def _service_info(service: Service, node: Node, ttl: int, service_type: str) -> AsyncServiceInfo:
    try:
        port = node.port
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise ValueError(f"node {node.id!r} has address {node.address!r}; expected host:port")
    instance = _instance_name(node.id)
    return AsyncServiceInfo(
        service_type,
        f"{instance}.{service_type}",
        port=port,
        properties=_encode_txt(service, node),
        server=f"{instance}.local.",  # one host name per node: a goodbye must not take others' A
        host_ttl=ttl,
        other_ttl=ttl,
        parsed_addresses=[node.host] if _is_specific_ipv4(node.host) else [],
    )


def _instance_name(node_id: str) -> str:
    """The node id when it makes a valid DNS label, else a shortened one with a hash of it."""
    raw = node_id.encode()
    if len(raw) <= _LABEL_MAX and node_id.isprintable() and "." not in node_id:
        return node_id
    digest = hashlib.sha256(raw).hexdigest()[:16]
    prefix = raw[: _LABEL_MAX - len(digest) - 1].decode(errors="ignore")
    prefix = "".join(c if c.isprintable() and c != "." else "-" for c in prefix)
    return f"{prefix}-{digest}"


def _encode_txt(service: Service, node: Node) -> bytes:
    """TXT strings: the fixed keys, metadata while it fits, endpoints if they fit after it, and
    ``fetch=`` naming what was left out (RFC 6763: keep the whole under ~1300 bytes)."""
    fields = {
        "name": service.name,
        "version": service.version,
        "id": node.id,
        "addr": node.address,
        "rev": _revision(service, node),
    }
    strings = [_fixed_string(key, value) for key, value in fields.items()]
    room = _TXT_BUDGET - _size(strings) - _size([b"fetch=sne"])
    fetch = set()
    for flag, metadata in (("s", service.metadata), ("n", node.metadata)):
        for key, value in metadata.items():
            string = _metadata_string(flag, key, value)
            if string is None or _size([string]) > room:
                fetch.add(flag)
                continue
            strings.append(string)
            room -= _size([string])
    chunks = _endpoint_chunks(service)
    if _size(chunks) <= room:
        strings.extend(chunks)
    else:
        fetch.add("e")
    if fetch:
        strings.append(b"fetch=" + "".join(sorted(fetch)).encode())
    return b"".join(bytes((len(string),)) + string for string in strings)


@functools.lru_cache(maxsize=1024)
def _decode_txt(text: bytes) -> _Advert | None:
    """The advert a TXT record holds; ``None`` for a record that is not one of ours."""
    fields = _txt_fields(text)
    if not {"name", "version", "id", "addr", "rev"} <= fields.keys():
        return None
    missing = fields.get("fetch", "")
    endpoints: list[object] = []
    if "e" not in missing:
        try:
            endpoints = _decode_endpoints(fields)
        except (ValueError, zlib.error):
            logger.debug("unreadable endpoints in the TXT record of %s", fields["id"])
            missing += "e"
    node = {"id": fields["id"], "address": fields["addr"], "metadata": _prefixed(fields, "n.")}
    data = {
        "name": fields["name"],
        "version": fields["version"],
        "metadata": _prefixed(fields, "s."),
        "endpoints": endpoints,
        "nodes": [node],
    }
    try:
        record = Service.from_dict(data)
    except (LookupError, TypeError, AttributeError):
        logger.debug("ignoring a malformed TXT record: %r", text)
        return None
    return _Advert(text, record, fields["rev"], missing)


def _txt_fields(text: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    offset = 0
    while offset < len(text):
        length = text[offset]
        key, _, value = text[offset + 1 : offset + 1 + length].partition(b"=")
        fields.setdefault(key.decode(errors="replace"), value.decode(errors="replace"))
        offset += 1 + length
    return fields


def _fixed_string(key: str, value: str) -> bytes:
    string = f"{key}={value}".encode()
    if len(string) > _TXT_STRING_MAX:
        raise ValueError(f"{key} {value!r} is too long for mDNS (over {_TXT_STRING_MAX} bytes)")
    return string


def _metadata_string(flag: str, key: str, value: str) -> bytes | None:
    """``s.key=value`` (service) or ``n.key=value`` (node); ``None`` when it cannot be one."""
    if not (key.isascii() and key.isprintable()) or "=" in key:
        return None  # TXT keys are printable US-ASCII without "="
    string = f"{flag}.{key}={value}".encode()
    return string if len(string) <= _TXT_STRING_MAX else None


def _endpoint_chunks(service: Service) -> list[bytes]:
    if not service.endpoints:
        return []
    blob = base64.b64encode(zlib.compress(orjson.dumps(service.endpoints), 9))
    starts = range(0, len(blob), _ENDPOINT_CHUNK)
    return [
        b"e%d=%s" % (i, blob[start : start + _ENDPOINT_CHUNK]) for i, start in enumerate(starts)
    ]


def _decode_endpoints(fields: dict[str, str]) -> list[object]:
    chunks = itertools.takewhile(bool, (fields.get(f"e{i}", "") for i in itertools.count()))
    blob = "".join(chunks)
    if not blob:
        return []
    endpoints = orjson.loads(zlib.decompress(base64.b64decode(blob, validate=True)))
    if not isinstance(endpoints, list):
        raise ValueError("endpoints are not a list")
    return endpoints


def _revision(service: Service, node: Node) -> str:
    """Changes whenever what a fetch returns changes, so fetched records are cached by it."""
    body = [service.metadata, node.metadata, service.endpoints]
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def _prefixed(fields: dict[str, str], prefix: str) -> dict[str, str]:
    return {key[len(prefix) :]: value for key, value in fields.items() if key.startswith(prefix)}


def _size(strings: list[bytes]) -> int:
    return sum(1 + len(string) for string in strings)


def _merge(record: Service, fetched: Service) -> Service:
    """Fill a TXT-built record with what the node served about itself."""
    if (fetched.name, fetched.version) != (record.name, record.version):
        return record  # something else answers at that address now
    record.metadata = fetched.metadata
    record.endpoints = fetched.endpoints
    node = record.nodes[0]
    for served in fetched.nodes:
        if served.id == node.id:
            node.metadata = served.metadata
    return record


# -- options ----------------------------------------------------------------------------------


def _interfaces_for(host: str) -> list[str]:
    """Where a node bound to ``host`` is advertised: its own interface (plus loopback, for local
    tools), all of them for ``0.0.0.0``, loopback for anything else (IPv6, host names)."""
    if host == _ALL:
        return [_ALL]
    if _is_specific_ipv4(host) and not ipaddress.IPv4Address(host).is_loopback:
        return [host, _LOOPBACK]
    return [_LOOPBACK]


def _is_specific_ipv4(host: str) -> bool:
    try:
        return not ipaddress.IPv4Address(host).is_unspecified
    except ValueError:
        return False


def _check_interfaces(interfaces: Sequence[str] | None) -> list[str] | None:
    if interfaces is None:
        return None
    if isinstance(interfaces, str):
        raise ValueError(f"interfaces must be a list of IPv4 addresses, e.g. [{interfaces!r}]")
    checked = []
    for interface in interfaces:
        try:
            checked.append(str(ipaddress.IPv4Address(interface.strip())))
        except ValueError:
            raise ValueError(
                f"mDNS interface {interface!r} is not an IPv4 address (IPv6 is not supported)"
            ) from None
    if not checked:
        raise ValueError("interfaces is empty; leave it out to follow the node's address")
    if _ALL in checked and len(checked) > 1:
        raise ValueError("0.0.0.0 means every interface and cannot be listed with others")
    return checked


def _seconds(options: dict[str, str], name: str, default: float) -> float:
    if name not in options:
        return default
    try:
        return float(options[name])
    except ValueError:
        raise ValueError(f"mdns:// option {name} must be seconds, got {options[name]!r}") from None


def _url(
    interfaces: list[str] | None, timeouts: dict[str, tuple[float, float]], domain: str
) -> str:
    """The registry's URL, with the options that differ from the defaults; ``timeouts`` maps an
    option to its value and its default."""
    options: dict[str, str] = {}
    if domain != DEFAULT_DOMAIN:
        options["domain"] = domain
    if interfaces is not None:
        options["interfaces"] = ",".join(interfaces)
    for option, (value, default) in timeouts.items():
        if value != default:
            options[option] = str(value)
    return f"mdns://?{urlencode(options, safe=',')}" if options else "mdns://"
