"""``Service``: a named, versioned micro service with its registry, client and lifecycle.

    service = Service("greeter", version="1.0.0")
    app = FastAPI(lifespan=service.lifespan)        # or app.add_middleware(MicroMiddleware, ...)

Backends come from arguments, else ``MICRO_*`` environment variables, else the embedded
defaults. On start the service registers its node with a TTL and re-registers on an interval;
on stop it deregisters first, then waits for in-flight requests, then closes its parts. Under a
server (uvicorn) it also takes over SIGINT/SIGTERM for a moment: it deregisters and lets peers
notice before the server closes its sockets, so callers never race a closing node.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import re
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, Self

import httpx
import psutil
from pydantic_settings import BaseSettings, SettingsConfigDict

from . import registry as registry_module
from . import store as store_module
from .__about__ import __version__
from .endpoints import endpoints_of
from .registry import Endpoint, Node, Registry
from .registry import Service as ServiceRecord
from .state import STATE_KEY
from .store import Store
from .types import ASGIApp

if TYPE_CHECKING:
    from .client import Client
    from .grpc import GrpcSchema, GrpcServer

__all__ = ["Service", "Settings", "Stats"]

logger = logging.getLogger("asgi_micro")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class Settings(BaseSettings):
    """``MICRO_*`` environment variables; arguments to ``Service`` take precedence."""

    model_config = SettingsConfigDict(env_prefix="MICRO_", extra="ignore")

    registry: str = registry_module.DEFAULT_URL
    store: str = store_module.DEFAULT_URL
    address: str | None = None
    grpc: bool = True
    grpc_address: str | None = None
    grpc_package: str | None = None
    register_ttl: float = 30.0
    register_interval: float = 10.0


@dataclass(slots=True)
class Stats:
    started_at: float = 0.0
    requests: int = 0
    errors: int = 0
    in_flight: int = 0

    def snapshot(self, service: Service) -> dict[str, Any]:
        process = _process()
        return {
            "service": service.name,
            "version": service.version,
            "node": service.id,
            "started": self.started_at,
            "uptime": round(time.time() - self.started_at, 3) if self.started_at else 0.0,
            "requests": self.requests,
            "errors": self.errors,
            "in_flight": self.in_flight,
            "memory": process.memory_info().rss,
            "threads": process.num_threads(),
        }


class Service:
    def __init__(
        self,
        name: str,
        *,
        version: str = "latest",
        metadata: Mapping[str, str] | None = None,
        registry: Registry | str | None = None,
        store: Store | str | None = None,
        address: str | None = None,
        register_ttl: float | None = None,
        register_interval: float | None = None,
        drain_timeout: float = 10.0,
        drain_grace: float = 1.0,
        grpc: bool | None = None,
        grpc_address: str | None = None,
        grpc_package: str | None = None,
        grpc_max_message_size: int | None = None,
    ) -> None:
        if not _NAME.fullmatch(name):
            raise ValueError(f"a service name is letters, digits, '.', '_' and '-', got {name!r}")
        settings = Settings()
        self.name = name
        self.version = version
        self.metadata = dict(metadata or {})
        self.id = f"{name}-{uuid.uuid4()}"
        self.registry: Registry = (
            registry_module.from_url(registry or settings.registry)
            if registry is None or isinstance(registry, str)
            else registry
        )
        # One backend for the process's service; ``store`` is the view on this service's table.
        self._store_backend: Store = (
            store_module.from_url(store or settings.store)
            if store is None or isinstance(store, str)
            else store
        )
        self.address = address or settings.address
        self.register_ttl = settings.register_ttl if register_ttl is None else register_ttl
        self.register_interval = (
            settings.register_interval if register_interval is None else register_interval
        )
        if self.register_ttl <= 0 or self.register_interval <= 0:
            raise ValueError("register_ttl and register_interval must be positive")
        if self.register_interval >= self.register_ttl:
            raise ValueError(
                f"register_interval ({self.register_interval}s) must be shorter than register_ttl "
                f"({self.register_ttl}s), or the node expires between heartbeats"
            )
        self.drain_timeout = drain_timeout
        self.drain_grace = drain_grace
        # gRPC: on unless turned off; address default: a free port on the HTTP host.
        self.grpc = settings.grpc if grpc is None else grpc
        self.grpc_address = grpc_address or settings.grpc_address
        self.grpc_package = grpc_package or settings.grpc_package
        self.grpc_max_message_size = grpc_max_message_size
        self.grpc_server: GrpcServer | None = None
        self._grpc_schema: GrpcSchema | None = None
        self.stats = Stats()
        self.app: ASGIApp | None = None
        self.node: Node | None = None
        self.draining = False
        self.middleware_active = False
        self._endpoints: list[Endpoint] | None = None
        self._started = False
        self._lock = asyncio.Lock()
        self._registration: asyncio.Task[None] | None = None
        self._registered = asyncio.Event()
        self._client: Client | None = None
        self._exit_drain: asyncio.Task[None] | None = None
        self._signals_hooked = False
        self._idle = asyncio.Event()
        self._listening_at_start: set[tuple[str, int]] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def status(self) -> str:
        if self.draining:
            return "draining"
        return "serving" if self._started else "stopped"

    async def start(self) -> None:
        """Start the parts and register the node (when serving an app); idempotent."""
        async with self._lock:
            if self._started:
                return
            await self.registry.start()
            await self._store_backend.start()
            self.draining = False
            self.stats.started_at = time.time()
            self._started = True
            if self.app is None:
                return  # a client-only service: nothing to register
            self._prepare_grpc()
            if self.address is not None:
                host, _, port = self.address.rpartition(":")
                if self.grpc and host and port.isdigit():  # else _register says what is wrong
                    await self._start_grpc(host)
                await self._register(self.address)
            else:
                self._listening_at_start = await asyncio.to_thread(_listening)
                if self.grpc and self.grpc_address is not None:
                    await self._start_grpc(None)
            self._registration = asyncio.create_task(
                self._keep_registered(), name=f"asgi-micro registration {self.name}"
            )

    async def stop(self) -> None:
        """Deregister, wait for in-flight requests, close the parts; idempotent."""
        async with self._lock:
            if not self._started:
                return
            self.draining = True
            await self._grpc_serving(False)
            await self._deregister()
            if self.grpc_server is not None:
                server, self.grpc_server = self.grpc_server, None
                # Its calls count as in flight too: both end within drain_timeout.
                await asyncio.gather(self._wait_in_flight(), server.stop(self.drain_timeout))
            else:
                await self._wait_in_flight()
            if self._client is not None:
                await self._client.aclose()
                self._client = None
            await self._store_backend.stop()
            await self.registry.stop()
            self._started = False
            self.draining = False

    async def drain(self) -> None:
        """Stop taking work while still serving: deregister, give callers ``drain_grace``
        seconds to notice, then wait for in-flight requests."""
        self.draining = True
        await self._grpc_serving(False)
        if await self._deregister() and self.drain_grace > 0:
            await asyncio.sleep(self.drain_grace)
        await self._wait_in_flight()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[dict[str, Any]]:
        """The lifespan for ``FastAPI(lifespan=service.lifespan)`` or Starlette."""
        self.attach(app)
        if not self.middleware_active and getattr(app, "middleware_stack", None) is not None:
            # The stack is built before the lifespan runs: wrap it so every later request goes
            # through the same middleware as with app.add_middleware(MicroMiddleware, ...).
            from .middleware import MicroMiddleware

            app.middleware_stack = MicroMiddleware(app.middleware_stack, service=self)
        async with self:
            self.drain_on_exit_signals()
            yield {STATE_KEY: self}

    def attach(self, app: ASGIApp) -> None:
        """Serve ``app``: its routes become this service's endpoints."""
        self.app = app
        self._endpoints = None

    async def wait_registered(self, timeout: float = 10.0) -> None:
        """Wait until the node is in the registry (the first registration may wait for the
        server to bind its port)."""
        await asyncio.wait_for(self._registered.wait(), timeout)

    def request_finished(self) -> None:
        """Called by the middleware as each request ends: wakes a drain waiting for the last."""
        if self.stats.in_flight == 0:
            self._idle.set()

    # -- registry -----------------------------------------------------------------------------

    @property
    def endpoints(self) -> list[Endpoint]:
        if self._endpoints is None:
            grpc_paths = self._grpc_schema.paths if self._grpc_schema is not None else None
            self._endpoints = (
                endpoints_of(self.app, grpc=grpc_paths) if self.app is not None else []
            )
        return self._endpoints

    def record(self) -> ServiceRecord:
        """This node as a registry record."""
        return ServiceRecord(
            name=self.name,
            version=self.version,
            metadata=dict(self.metadata),
            endpoints=self.endpoints,
            nodes=[self.node] if self.node is not None else [],
        )

    async def _register(self, address: str) -> None:
        if self.node is None:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{self.name}: the address must be host:port, got {address!r}")
            self.node = Node(
                id=self.id,
                address=f"{_advertised_host(host.strip('[]'))}:{port}",
                metadata={
                    **self.metadata,
                    "server": f"asgi-micro/{__version__}",
                    "protocol": "http",
                },
            )
        if self.grpc_server is not None:
            host, _, port = self.grpc_server.address.rpartition(":")
            self.node.metadata["grpc"] = f"{_advertised_host(host.strip('[]'))}:{port}"
        await self.registry.register(self.record(), ttl=self.register_ttl)
        self._registered.set()

    async def _keep_registered(self) -> None:
        if self.node is None:
            grpc_ports = {self.grpc_server.port} if self.grpc_server is not None else set()
            address = await _detect_address(self._listening_at_start, exclude=grpc_ports)
            if address is None:
                logger.error(
                    "%s: cannot tell which address this process serves on; set MICRO_ADDRESS "
                    "or Service(address=...) to register it",
                    self.name,
                )
                return
            await self._start_grpc_logged(address)
            await self._register_logged(address)
        else:
            await self._start_grpc_logged(self.node.address)  # started again: same node
        while True:
            await asyncio.sleep(self.register_interval)
            assert self.node is not None
            await self._register_logged(self.node.address)

    async def _register_logged(self, address: str) -> None:
        try:
            await self._register(address)
        except Exception:
            logger.warning("%s: registration failed; retrying", self.name, exc_info=True)

    async def _deregister(self) -> bool:
        """Withdraw the node; ``True`` when it had been registered."""
        if self._registration is not None:
            self._registration.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._registration
            self._registration = None
        if not self._registered.is_set():
            return False
        self._registered.clear()
        try:
            await self.registry.deregister(self.record())
        except Exception:
            logger.warning("%s: deregistration failed", self.name, exc_info=True)
        return True

    async def _wait_in_flight(self) -> None:
        if self.stats.in_flight == 0:
            return
        self._idle = asyncio.Event()  # set by the middleware when the last request ends
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), self.drain_timeout)
        if self.stats.in_flight > 0:
            logger.warning(
                "%s: %d request(s) still running after %ss",
                self.name,
                self.stats.in_flight,
                self.drain_timeout,
            )

    # -- gRPC -------------------------------------------------------------------------------

    def _prepare_grpc(self) -> None:
        """Build the protobuf package of the app's handlers, once, so that gRPC and HTTP
        ``application/protobuf`` share its converters; importing it registers that codec."""
        from . import protobuf

        if not self.grpc:
            return
        from .grpc import grpc_schema, service_package

        try:
            self._grpc_schema = grpc_schema(self.app, package=service_package(self))
        except protobuf.ProtoSchemaError as exc:
            raise protobuf.ProtoSchemaError(
                f"{self.name}: {exc}; or serve HTTP only: Service(grpc=False) or MICRO_GRPC=false"
            ) from exc
        self._endpoints = None

    async def _start_grpc(self, http_host: str | None) -> None:
        from .grpc import DEFAULT_MAX_MESSAGE_SIZE, GrpcServer

        assert self._grpc_schema is not None
        if http_host and ":" in http_host and not http_host.startswith("["):
            http_host = f"[{http_host}]"  # an IPv6 address, as grpc reads host:port
        server = GrpcServer(
            self,
            self._grpc_schema,
            address=self.grpc_address or f"{http_host}:0",
            max_message_size=self.grpc_max_message_size or DEFAULT_MAX_MESSAGE_SIZE,
        )
        await server.start()
        self.grpc_server = server

    async def _start_grpc_logged(self, http_address: str) -> None:
        """Start gRPC once the HTTP address is known, unless it runs already."""
        if not self.grpc or self.grpc_server is not None:
            return
        try:
            await self._start_grpc(http_address.rpartition(":")[0])
        except Exception:
            logger.exception("%s: gRPC failed to start; serving HTTP only", self.name)

    async def _grpc_serving(self, serving: bool) -> None:
        if self.grpc_server is not None:
            await self.grpc_server.set_serving(serving)

    # -- parts ------------------------------------------------------------------------------

    @property
    def store(self) -> Store:
        """The store, scoped to database ``micro`` and this service's table; ``.database()``
        and ``.table()`` give other namespaces on the same connections."""
        return self._store_backend.table(self.name)

    # -- calling other services -------------------------------------------------------------

    @property
    def client(self) -> Client:
        """The client for calling other services by name."""
        if self._client is None:
            from .client import Client

            self._client = Client(registry=self.registry, caller=self.name)
        return self._client

    def http(self, **options: Any) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` in which ``http://<service>/...`` reaches a node of that
        service, chosen, retried and ejected like any call (see ``Client.http``)."""
        return self.client.http(**options)

    # -- signals ------------------------------------------------------------------------------

    def drain_on_exit_signals(self) -> None:
        """On the first SIGINT/SIGTERM, drain before handing the signal to the server's own
        handler; a second signal goes straight through. Only from the main thread."""
        if self._signals_hooked or threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous = signal.getsignal(signum)
            if callable(previous):
                signal.signal(signum, functools.partial(self._on_exit_signal, loop, previous))
        self._signals_hooked = True

    def _on_exit_signal(
        self,
        loop: asyncio.AbstractEventLoop,
        previous: Callable[[int, FrameType | None], Any],
        signum: int,
        frame: FrameType | None,
    ) -> None:
        if self._exit_drain is not None or not self._started or loop.is_closed():
            previous(signum, frame)
            return
        loop.call_soon_threadsafe(self._begin_exit_drain, previous, signum)

    def _begin_exit_drain(
        self, previous: Callable[[int, FrameType | None], Any], signum: int
    ) -> None:
        async def drain_then_exit() -> None:
            try:
                await self.drain()
            finally:
                previous(signum, None)

        self._exit_drain = asyncio.get_running_loop().create_task(drain_then_exit())


@functools.cache
def _process() -> psutil.Process:
    return psutil.Process()


def _listening() -> set[tuple[str, int]]:
    return {
        (conn.laddr.ip, conn.laddr.port)
        for conn in _process().net_connections(kind="inet")
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
        new = {(host, port) for host, port in _listening() - before if port not in exclude}
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


def _advertised_host(host: str) -> str:
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
