"""Announcing one node of a service: its address, a record with a TTL, a heartbeat.

The address is the one configured, or the one the server binds once the service has started
(found among the process's listening sockets). Parts that serve beside HTTP (gRPC) start on
the same host once it is known and add their address to the node's metadata. The record is
registered again every ``interval`` seconds, well within its ``ttl``; ``withdraw`` deregisters
the node at once, first thing in a drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import psutil

from .__about__ import __version__
from .registry import Endpoint, Node, Registry
from .registry import Service as ServiceRecord

__all__ = ["Announced", "Registrar", "advertised_host"]

logger = logging.getLogger(__name__)


class Announced(Protocol):
    """A part that serves on an address of its own beside HTTP, such as gRPC."""

    @property
    def metadata_key(self) -> str:
        """The node metadata key of its address (``grpc``)."""
        ...

    async def serve_on(self, http_host: str) -> str | None:
        """Start serving on ``http_host`` (or the address it was given), unless it serves
        already: its ``host:port``, or ``None`` when it serves nothing."""
        ...

    @property
    def port(self) -> int | None:
        """The port it listens on once serving, which address detection must not take for
        the HTTP server's."""
        ...


class Registrar:
    """Keeps one node of ``name`` in ``registry`` for as long as it runs."""

    def __init__(
        self,
        registry: Registry,
        *,
        name: str,
        version: str,
        node_id: str,
        metadata: Mapping[str, str],
        endpoints: Callable[[], list[Endpoint]],
        address: str | None,
        ttl: float,
        interval: float,
        announced: Sequence[Announced] = (),
    ) -> None:
        if ttl <= 0 or interval <= 0:
            raise ValueError("register_ttl and register_interval must be positive")
        if interval >= ttl:
            raise ValueError(
                f"register_interval ({interval}s) must be shorter than register_ttl "
                f"({ttl}s), or the node expires between heartbeats"
            )
        self.registry = registry
        self.name = name
        self.version = version
        self.node_id = node_id
        self.metadata = dict(metadata)
        self.endpoints = endpoints
        self.address = address
        self.ttl = ttl
        self.interval = interval
        self.announced = tuple(announced)
        self.node: Node | None = None
        self.registered = asyncio.Event()
        self._heartbeat: asyncio.Task[None] | None = None
        self._advertised: list[Callable[[], Mapping[str, str]]] = []

    def advertise(self, source: Callable[[], Mapping[str, str]]) -> None:
        """Add node metadata that changes while the node runs (the embedded broker's
        subscriptions): ``source()`` is read at each registration; ``refresh`` registers a
        change at once."""
        self._advertised.append(source)

    def record(self) -> ServiceRecord:
        """This node as a registry record."""
        node = self.node
        if node is not None and self._advertised:
            metadata = dict(node.metadata)
            for source in self._advertised:
                metadata.update(source())
            node = Node(id=node.id, address=node.address, metadata=metadata)
        return ServiceRecord(
            name=self.name,
            version=self.version,
            metadata=dict(self.metadata),
            endpoints=self.endpoints(),
            nodes=[node] if node is not None else [],
        )

    async def refresh(self) -> None:
        """Register the node again now, if it is registered: its record changed."""
        if self.registered.is_set():
            await self._register()

    async def start(self) -> None:
        """Register now when the address is known (a bad one raises here), else once the
        server listens; then keep the node registered."""
        known = self.address if self.address is not None else getattr(self.node, "address", None)
        if known is not None:  # configured, or started again after a stop: the same node
            await self._announce(known)
            await self._register()
            self._keep_registered()
        else:
            listening = await asyncio.to_thread(_listening)
            self._heartbeat = asyncio.create_task(
                self._detect_then_register(listening), name=f"asgi-micro registration {self.name}"
            )

    async def withdraw(self) -> bool:
        """Stop the heartbeat and deregister the node; ``True`` when it had been registered.
        Idempotent."""
        await self._stop_heartbeat()
        if not self.registered.is_set():
            return False
        self.registered.clear()
        try:
            await self.registry.deregister(self.record())
        except Exception:
            logger.warning("%s: deregistration failed", self.name, exc_info=True)
        return True

    async def abandon(self) -> None:
        """Stop the heartbeat and leave the registration behind, as a process that dies
        does: the registry drops the node once its ``ttl`` runs out, and a ``withdraw`` or
        ``stop`` after this deregisters nothing."""
        await self._stop_heartbeat()
        self.registered.clear()

    async def stop(self) -> None:
        await self.withdraw()

    async def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None

    # -- inside -----------------------------------------------------------------------------

    async def _announce(self, address: str, *, strict: bool = True) -> None:
        """The node at ``address``, with the addresses of the parts that serve beside it; a
        part that fails to start raises when ``strict``, else the node goes without it."""
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{self.name}: the address must be host:port, got {address!r}")
        advertised = _advertised(address)
        if self.node is None or self.node.address != advertised:  # new, or moved on a restart
            self.node = Node(
                id=self.node_id,
                address=advertised,
                metadata={
                    **self.metadata,
                    "server": f"asgi-micro/{__version__}",
                    "protocol": "http",
                },
            )
        for part in self.announced:
            try:
                at = await part.serve_on(host.strip("[]"))
            except Exception:
                if strict:
                    raise
                logger.exception(
                    "%s: %s failed to start; serving without it", self.name, part.metadata_key
                )
                continue
            if at is not None:
                self.node.metadata[part.metadata_key] = _advertised(at)

    async def _register(self) -> None:
        await self.registry.register(self.record(), ttl=self.ttl)
        if not self.registered.is_set():
            self.registered.set()
            assert self.node is not None
            logger.info(
                "%s %s registered node %s at %s%s in %s",
                self.name,
                self.version,
                self.node.id,
                self.node.address,
                "".join(f", {k} {v}" for k, v in sorted(self._addresses().items())),
                self.registry.url,
            )

    def _addresses(self) -> dict[str, str]:
        assert self.node is not None
        return {
            part.metadata_key: self.node.metadata[part.metadata_key]
            for part in self.announced
            if part.metadata_key in self.node.metadata
        }

    def _keep_registered(self) -> None:
        self._heartbeat = asyncio.create_task(
            self._beat(), name=f"asgi-micro registration {self.name}"
        )

    async def _detect_then_register(self, listening: set[tuple[str, int]]) -> None:
        exclude = {port for part in self.announced if (port := part.port) is not None}
        address = await _detect_address(listening, exclude=exclude)
        if address is None:
            logger.error(
                "%s: cannot tell which address this process serves on; set MICRO_ADDRESS "
                "or Service(address=...) to register it",
                self.name,
            )
            return
        await self._announce(address, strict=False)
        await self._register_logged()
        await self._beat()

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self._register_logged()

    async def _register_logged(self) -> None:
        try:
            await self._register()
        except Exception:
            logger.warning("%s: registration failed; retrying", self.name, exc_info=True)


def _listening() -> set[tuple[str, int]]:
    return {
        (conn.laddr.ip, conn.laddr.port)
        for conn in psutil.Process().net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN
    }


async def _detect_address(
    before: set[tuple[str, int]], *, exclude: set[int], timeout: float = 10.0
) -> str | None:
    """The ``host:port`` the server binds after the service started (``before`` is what was
    listening then), or the one port that was already listening, as with pre-forked workers
    whose sockets were bound by their master; ``None`` when that is ambiguous."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        listening = await asyncio.to_thread(_listening)
        new = {(host, port) for host, port in listening - before if port not in exclude}
        if len({port for _, port in new}) == 1:
            host, port = sorted(new)[0]
            return f"{host}:{port}"
        if new:
            return None
        if time.monotonic() - started > 1.0:
            old = {(host, port) for host, port in before if port not in exclude}
            if len({port for _, port in old}) == 1:
                host, port = sorted(old)[0]
                return f"{host}:{port}"
        await asyncio.sleep(0.05)
    return None


def _advertised(address: str) -> str:
    host, _, port = address.rpartition(":")
    return f"{advertised_host(host.strip('[]'))}:{port}"


def advertised_host(host: str) -> str:
    """A bind address as peers should dial it: a wildcard becomes this machine's address."""
    if host not in ("0.0.0.0", "::", ""):
        return f"[{host}]" if ":" in host else host
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family.name != "AF_INET":
                continue
            ip = ipaddress.ip_address(address.address)
            if not ip.is_loopback and not ip.is_link_local:
                return str(ip)
    return "127.0.0.1"
