"""``Service``: a named, versioned micro service, a small facade over its parts.

    service = Service("greeter", version="1.0.0")
    app = FastAPI(lifespan=service.lifespan)        # or app.add_middleware(MicroMiddleware, ...)

The parts, each in a module of its own, start in this order and stop in the reverse one: the
registry, the store and the database (backends from arguments, else ``MICRO_*`` environment
variables, else the embedded defaults), and, when the service serves an app, the gRPC server and the
registrar, which registers the node with a TTL and keeps it registered. Every call on every
protocol runs through the service's ``pipeline``, with the wrappers added by ``wrap``.

On stop the service drains first: gRPC health says ``NOT_SERVING``, the node is deregistered,
the calls in flight (HTTP, WebSocket, gRPC) get ``drain_timeout`` seconds to end; then the
parts stop. Under a server (uvicorn) it also takes SIGINT/SIGTERM for a moment: it drains and
lets peers notice before the server closes its sockets, so callers never race a closing node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import types
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import httpx
from pydantic import BaseModel
from starlette.middleware.errors import ServerErrorMiddleware

from . import auth as auth_module
from . import broker as broker_module
from . import local
from . import registry as registry_module
from . import store as store_module
from . import sync as sync_module
from .auth import Auth
from .auth.guard import Guard, jwks_through
from .broker import Broker
from .broker.base import check_topic
from .broker.http import Embeddable
from .config import Config, default_sources
from .data import Database
from .endpoints import endpoints_of
from .events import Events, Publication, Publisher, Subscriber
from .grpc import GrpcServer, service_package
from .heap import freeze_startup_heap
from .messages import message_type
from .metrics import Metrics
from .middleware import MicroMiddleware
from .naming import SERVICE_NAME
from .openapi import use_served_openapi
from .pipeline import Pipeline, Stats, Wrapper
from .plugins import Lifecycle, Parts
from .registrar import Registrar
from .registry import Endpoint, Node, Registry
from .registry import Service as ServiceRecord
from .routes import wrap_plain_routes
from .settings import Settings
from .signals import ExitSignals
from .state import STATE_KEY
from .store import Store
from .sync import Sync
from .tracing import Tracing, own_server_spans, tracing_for
from .types import ASGIApp

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from .client import Client

__all__ = ["Part", "Service", "Settings", "Stats", "service_of_app"]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


class Part(Protocol):
    """A piece of a service with a lifecycle: ``start`` and ``stop``, both idempotent."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Service(Lifecycle):
    """A named, versioned micro service: a small facade over its parts (registry, store,
    config, database, sync, auth, broker, metrics, events, gRPC server, registrar), each from
    an argument, else a ``MICRO_*`` variable, else the embedded default. They start in order
    and stop in reverse after a drain. Serve an app with ``FastAPI(lifespan=service.lifespan)``
    or ``app.add_middleware(MicroMiddleware, service=service)``."""

    def __init__(
        self,
        name: str,
        *,
        version: str = "latest",
        metadata: Mapping[str, str] | None = None,
        registry: Registry | str | None = None,
        store: Store | str | None = None,
        database: Database | str | None = None,
        broker: Broker | str | None = None,
        auth: Auth | str | None = None,
        sync: Sync | str | None = None,
        address: str | None = None,
        register_ttl: float | None = None,
        register_interval: float | None = None,
        drain_timeout: float = 10.0,
        drain_grace: float = 1.0,
        grpc: bool | None = None,
        grpc_address: str | None = None,
        grpc_package: str | None = None,
        max_message_size: int | None = None,
        propagate: Collection[str] | None = None,
        trust_callers: bool | None = None,
        config: type[BaseModel] | Config[Any] | None = None,
        metrics: bool | None = None,
        tracing: bool | TracerProvider | Tracing | None = None,
    ) -> None:
        if not SERVICE_NAME.fullmatch(name):
            raise ValueError(f"a service name is letters, digits, '.', '_' and '-', got {name!r}")
        settings = Settings()
        self.name = name
        self.version = version
        self.metadata = dict(metadata or {})
        self.id = f"{name}-{uuid.uuid4()}"
        self.drain_timeout = drain_timeout
        self.drain_grace = drain_grace
        self.propagate = tuple(
            key.lower() for key in (settings.propagate if propagate is None else propagate)
        )
        """Metadata keys that calls made while handling a call carry on (``"*"``: all)."""
        self.gc_freeze = settings.gc_freeze
        """Whether ``start`` ends by freezing the start-up heap (``asgi_micro.heap``)."""
        self.trust_callers = settings.trust_callers if trust_callers is None else trust_callers
        """Whether callers' ``Micro-*`` metadata and deadline are taken; ``False`` for a
        service that faces the outside (a browser's headers are not ours)."""
        self.max_message_size = max_message_size or settings.max_message_size
        """The largest request body, WebSocket message and gRPC message it takes."""
        if self.max_message_size < 0:
            raise ValueError(f"max_message_size must be positive, got {max_message_size}")
        self.pipeline = Pipeline(self)
        self.app: ASGIApp | None = None
        self.internal_apps: dict[str, ASGIApp] = {}
        """ASGI apps that parts serve under ``/_micro/``, by path prefix (the embedded
        broker's inbox)."""

        # The parts, in the order they start. Backends given as objects belong to the caller,
        # who starts them too (a service starts them if needed) and stops them.
        self._owned: list[Part] = []
        self.registry: Registry = self._backend(
            registry or settings.registry, registry_module.from_url, Parts(service=name)
        )
        # One backend for the process's service; ``store`` is the view on this service's table.
        self._store_backend: Store = self._backend(
            store or settings.store,
            store_module.from_url,
            Parts(service=name, registry=self.registry),
        )
        self.config: Config[Any] | None = None
        """The service's config (``asgi_micro.config``): ``config=Settings`` loads the model
        from ``.env``, ``MICRO_CONFIG_*`` variables and the store records ``config/<path>`` of
        this service's table; a ``Config`` given is used as it is (and stopped by its owner)."""
        if isinstance(config, Config):
            self.config = config
        elif config is not None:
            self.config = Config(config, sources=default_sources(store=self.store))
            self._owned.append(self.config)
        self.database: Database = self._backend(
            database or settings.database, Database.from_url, Parts(service=name)
        )
        """The SQLModel tables' database (``asgi_micro.data``); ``Session`` gives a call a
        session on it."""
        self.sync: Sync = self._backend(
            sync or settings.sync,
            sync_module.from_url,
            Parts(service=name, registry=self.registry, store=self._store_backend),
        )
        """Locks and leader election (``asgi_micro.sync``); its leases end when it stops."""
        self.broker: Broker = self._backend(
            broker or settings.broker,
            broker_module.from_url,
            Parts(service=name, registry=self.registry, store=self._store_backend),
        )
        if not self.broker.source:
            self.broker.source = name
        self.auth: Auth = self._backend(
            auth or settings.auth or auth_module.DEFAULT_URL,
            auth_module.from_url,
            Parts(service=name, registry=self.registry, store=self._store_backend),
        )
        self.guard = Guard(
            self.auth,
            service=name,
            on=bool(auth or settings.auth) or settings.auth_default == "deny",
            default=settings.auth_default,
        )
        """Enforces auth on every call, names the service on its own (see
        ``asgi_micro.auth.guard``); a server wrapper, inside tracing and metrics, so that what it
        refuses is traced and counted."""
        self.tracing = tracing_for(
            settings.tracing if tracing is None else tracing,
            service=name,
            version=version,
            instance=self.id,
            broker_url=self.broker.url,
        )
        """Spans of every call in and out (``asgi_micro.tracing``), or ``None`` when off; the
        outermost server wrapper when on, so that what the others refuse is traced too."""
        if self.tracing is not None:
            self.pipeline.wrap(self.tracing.server)
        self.metrics = Metrics(self, on=settings.metrics if metrics is None else metrics)
        """Prometheus metrics at ``/_micro/metrics`` (``asgi_micro.metrics``); an observer of
        the pipeline, outside every wrapper (it counts the calls auth refuses too) and leaving
        the fast paths in place."""
        if self.metrics.on:
            self.pipeline.observe(self.metrics.served)
        if self.guard.on:
            self.pipeline.wrap(self.guard)
            self.guard.teacher = jwks_through(self.http)
        self.events = Events(self)
        self.publisher = Publisher(self)
        self.grpc_package = grpc_package or settings.grpc_package
        self.grpc_server: GrpcServer | None = None
        if settings.grpc if grpc is None else grpc:
            self.grpc_server = GrpcServer(
                self,
                address=grpc_address or settings.grpc_address,
                package=service_package(name, self.grpc_package),
                max_message_size=self.max_message_size,
            )
        self.registrar = Registrar(
            self.registry,
            name=name,
            version=version,
            node_id=self.id,
            metadata=self.metadata,
            endpoints=lambda: self.endpoints,
            address=address or settings.address,
            ttl=settings.register_ttl if register_ttl is None else register_ttl,
            interval=settings.register_interval if register_interval is None else register_interval,
            announced=[self.grpc_server] if self.grpc_server is not None else [],
        )
        if self.guard.on:
            self.registrar.advertise(lambda: self.guard.proof(self.registrar.node))
        if isinstance(self.broker, Embeddable):  # it receives in this service's app
            self.broker.embed(self)
        self._started = False
        self._signals = ExitSignals(self.drain, lambda: self._started)
        self._client: Client | None = None
        self._endpoints: list[Endpoint] | None = None
        self._running: list[Part] = []
        self._lock = asyncio.Lock()

    def _parts(self) -> list[Part]:
        """The parts to start, in order: the backends, then what serves an app."""
        parts: list[Part] = [
            *([self.tracing] if self.tracing is not None else []),  # stops last: flushes all
            self.registry,
            self._store_backend,
            *([self.config] if self.config is not None else []),
            self.database,
            self.sync,
            self.auth,
            self.guard,
            self.broker,
            self.metrics,
            self.events,
        ]
        if self.app is not None:
            if self.grpc_server is not None:
                parts.append(self.grpc_server)
            parts.append(self.registrar)
        return parts

    def _backend(self, given: Any, from_url: Any, parts: Parts) -> Any:
        if isinstance(given, str):
            backend = from_url(given, parts=parts)
            self._owned.append(backend)
            return backend
        return given

    def rebind(
        self,
        *,
        registry: Registry | str | None = None,
        store: Store | str | None = None,
        broker: Broker | str | None = None,
        sync: Sync | str | None = None,
        database: Database | str | None = None,
    ) -> dict[str, Any]:
        """Before it starts, use other backends than those chosen when it was made: what
        ``asgi_micro.testing.Cluster`` does to run users' services on in-memory ones. Backends
        built from a URL that depend on a replaced one (the embedded broker and auth on the
        registry and the store, locks on the store) are built again from their URL; the
        replaced ones were never started, so nothing is left running. Returns what it replaced
        (URLs for the backends the service built), for ``rebind(**previous)`` to go back."""
        if self._started:
            raise RuntimeError(f"{self.name}: rebind a service before it starts")
        name = self.name
        previous = {
            part: backend.url if backend in self._owned and "***" not in backend.url else backend
            for part, backend in (
                ("registry", self.registry),
                ("store", self._store_backend),
                ("broker", self.broker),
                ("sync", self.sync),
                ("database", self.database),
            )
        }

        def again(old: Any, given: Any, from_url: Any, parts: Parts) -> Any:
            if given is None and not (old in self._owned and old.url):
                return old
            if old in self._owned:
                self._owned.remove(old)
            return self._backend(given or old.url, from_url, parts)

        self.registry = again(
            self.registry, registry, registry_module.from_url, Parts(service=name)
        )
        self.registrar.registry = self.registry
        self._store_backend = again(
            self._store_backend,
            store,
            store_module.from_url,
            Parts(service=name, registry=self.registry),
        )
        if database is not None:  # its URL hides a password: never built again from it
            self.database = again(self.database, database, Database.from_url, Parts(service=name))
        uses_both = Parts(service=name, registry=self.registry, store=self._store_backend)
        self.sync = again(self.sync, sync, sync_module.from_url, uses_both)
        self.broker = again(self.broker, broker, broker_module.from_url, uses_both)
        if not self.broker.source:
            self.broker.source = name
        if isinstance(self.broker, Embeddable):
            self.broker.embed(self)
        auth = again(self.auth, None, auth_module.from_url, uses_both)
        self.auth = self.guard.auth = auth
        if self.config is not None and self.config in self._owned:
            self._owned.remove(self.config)
            self.config = Config(self.config.model, sources=default_sources(store=self.store))
            self._owned.append(self.config)
        self._client = None
        return previous

    # -- wrappers -----------------------------------------------------------------------------

    def wrap(self, wrapper: Wrapper) -> Wrapper:
        """Add a server wrapper: it sees every incoming call on every protocol (see
        ``asgi_micro.pipeline``). Usable as a decorator; add wrappers before the service
        serves."""
        return self.pipeline.wrap(wrapper)

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def status(self) -> str:
        if self.pipeline.draining:
            return "draining"
        return "serving" if self._started else "stopped"

    @property
    def stats(self) -> Stats:
        """Calls on every protocol: begun, failed with a server error, in flight."""
        return self.pipeline.stats

    @property
    def draining(self) -> bool:
        return self.pipeline.draining

    @property
    def address(self) -> str | None:
        """The HTTP address configured (``MICRO_ADDRESS``), if any; see ``node`` for the one
        registered."""
        return self.registrar.address

    @address.setter
    def address(self, address: str | None) -> None:
        self.registrar.address = address

    @property
    def node(self) -> Node | None:
        """This node as registered, once it is."""
        return self.registrar.node

    @property
    def register_ttl(self) -> float:
        return self.registrar.ttl

    @property
    def register_interval(self) -> float:
        return self.registrar.interval

    async def start(self) -> None:
        """Start the parts in order (registering the node when serving an app); idempotent.
        When a part fails, those started before it stop again."""
        async with self._lock:
            if self._started:
                return
            if self.app is not None:
                self._prepare()
            try:
                for part in self._parts():
                    await part.start()
                    self._running.append(part)
            except BaseException:
                await self._stop_parts()
                raise
            self.pipeline.reset()
            if self.app is not None:
                local.serve(self.id, self, self.app)  # calls from this process skip sockets
            self._started = True
            if self.gc_freeze:
                freeze_startup_heap()

    async def stop(self) -> None:
        """Drain (deregister, wait for calls in flight), then stop the parts in reverse
        order; idempotent."""
        async with self._lock:
            if not self._started:
                return
            await self._withdraw()
            await self._wait_in_flight()
            local.withdraw(self.id)
            if self._client is not None:
                await self._client.aclose()
                self._client = None
            await self._stop_parts()
            self._started = False
            self.pipeline.draining = False

    async def drain(self) -> None:
        """Stop taking work while still serving: deregister, give callers ``drain_grace``
        seconds to notice, then wait for the calls in flight."""
        if await self._withdraw() and self.drain_grace > 0:
            await asyncio.sleep(self.drain_grace)
        await self._wait_in_flight()

    async def _withdraw(self) -> bool:
        self.pipeline.draining = True
        await self.events.stop()  # no new events; those being handled are in flight
        if self.grpc_server is not None:
            await self.grpc_server.drain()
        return await self.registrar.withdraw()

    async def _wait_in_flight(self) -> None:
        left = await self.pipeline.wait_idle(self.drain_timeout)
        if left:
            logger.warning(
                "%s: %d call(s) still running after %ss", self.name, left, self.drain_timeout
            )

    async def _stop_parts(self) -> None:
        while self._running:
            part = self._running.pop()
            if part in self._owned or not _is_backend(part):
                try:
                    await part.stop()
                except Exception:
                    logger.exception("%s: %r failed to stop", self.name, part)

    def _prepare(self) -> None:
        """Before serving: the protobuf package of the app's handlers (gRPC and HTTP
        ``application/protobuf`` share its converters), and the plain routes through the
        wrappers when there are any."""
        assert self.app is not None
        if self.grpc_server is not None:
            self.grpc_server.prepare(self.app)
        self._endpoints = None
        if self.pipeline.wrapped:
            wrap_plain_routes(self.app)
        self.pipeline.frozen = True

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[dict[str, Any]]:
        """The lifespan for ``FastAPI(lifespan=service.lifespan)`` or Starlette."""
        self.attach(app)
        _install_middleware(app, self)
        async with self:
            self.drain_on_exit_signals()
            yield {STATE_KEY: self}

    def attach(self, app: ASGIApp) -> None:
        """Serve ``app``: its routes become this service's endpoints, and its OpenAPI document
        says what the service serves (``asgi_micro.openapi``); with tracing on, its calls' server
        spans are the service's (FastAPI's own are turned off)."""
        self.app = app
        self._endpoints = None
        use_served_openapi(app)
        if self.tracing is not None:
            own_server_spans(app)

    def drain_on_exit_signals(self) -> None:
        """On the first SIGINT/SIGTERM, drain before the server's own handler runs; a second
        signal goes straight through. Only from the main thread."""
        self._signals.install()

    async def wait_registered(self, timeout: float = 10.0) -> None:
        """Wait until the node is in the registry (the first registration may wait for the
        server to bind its port)."""
        await asyncio.wait_for(self.registrar.registered.wait(), timeout)

    # -- registry -----------------------------------------------------------------------------

    @property
    def endpoints(self) -> list[Endpoint]:
        if self._endpoints is None:
            schema = self.grpc_server.schema if self.grpc_server is not None else None
            grpc_paths = schema.paths if schema is not None else None
            self._endpoints = (
                endpoints_of(self.app, grpc=grpc_paths) if self.app is not None else []
            )
        return self._endpoints

    def record(self) -> ServiceRecord:
        """This node as a registry record."""
        return self.registrar.record()

    # -- parts --------------------------------------------------------------------------------

    @property
    def store(self) -> Store:
        """The store, scoped to database ``micro`` and this service's table; ``.database()``
        and ``.table()`` give other namespaces on the same connections."""
        return self._store_backend.table(self.name)

    @property
    def client(self) -> Client:
        """The client for calling other services by name."""
        if self._client is None:
            from .client import Client
            from .client.policies import Policies

            guard = self.guard
            self._client = Client(
                registry=self.registry,
                caller=self.name,
                propagate=self.propagate,
                identity=guard.identity if guard.on else None,
                trusts=guard.trusts if guard.on else None,
                wrappers=(self.tracing.client,) if self.tracing is not None else (),
                policies=Policies.from_env(),  # MICRO_POLICIES
            )
        return self._client

    # -- events -------------------------------------------------------------------------------

    def subscribe(
        self,
        topic: str,
        *,
        queue: str | None = None,
        concurrency: int = 16,
        max_deliveries: int = broker_module.DEFAULT_MAX_DELIVERIES,
    ) -> Callable[[F], F]:
        """Run the decorated handler for each event on ``topic`` (see ``asgi_micro.events``):
        every instance of the service gets each event, or with ``queue`` one member of that
        queue group does. At most ``concurrency`` at a time per instance; after
        ``max_deliveries`` failed deliveries the event goes to ``<topic>.dead``."""

        def decorator(handler: F) -> F:
            self.events.add(
                Subscriber.of(
                    topic,
                    handler,
                    queue=queue,
                    concurrency=concurrency,
                    max_deliveries=max_deliveries,
                )
            )
            return handler

        return decorator

    def publishes(self, topic: str, message: Any, *, description: str | None = None) -> None:
        """Declare that the service publishes ``message`` (a pydantic model, a protobuf class,
        any type pydantic validates) on ``topic``: the AsyncAPI document
        (``/_micro/asyncapi.json``) lists it, and ``publish`` on ``topic`` then takes that type
        or what validates into it, and raises ``ValueError`` for anything else."""
        check_topic(topic)
        self.events.declare(Publication(topic, message_type(message), description))

    async def publish(
        self,
        topic: str,
        message: Any,
        *,
        metadata: Mapping[str, str] | None = None,
        timeout: float | None = None,
        content_type: str = "application/json",
    ) -> str:
        """Publish ``message`` on ``topic``; returns the event's id once the broker has
        accepted it (see ``asgi_micro.events``)."""
        return await self.publisher.publish(
            topic, message, metadata=metadata, timeout=timeout, content_type=content_type
        )

    def trusts_node(self, service: str, node: Node) -> bool:
        """Whether ``node``'s registration proves it a node of ``service``: always with auth
        off, else when its proof verifies (see ``asgi_micro.auth.guard``)."""
        return self.guard.trusts(service, node)

    def http(self, **options: Any) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` in which ``http://<service>/...`` reaches a node of that
        service, chosen, retried and ejected like any call (see ``Client.http``)."""
        return self.client.http(**options)

    def __repr__(self) -> str:
        return f"Service({self.name!r}, version={self.version!r}, status={self.status!r})"


def _is_backend(part: Part) -> bool:
    return isinstance(part, Registry | Store | Database | Sync | Broker | Auth | Config)


def _install_middleware(app: Any, service: Service) -> None:
    """Put ``MicroMiddleware`` where ``app.add_middleware`` would have: just inside the
    server-error middleware, so that both ways of adopting the framework behave the same. The
    stack is built before the lifespan runs; an app that added the middleware itself keeps it."""
    if any(m.cls is MicroMiddleware for m in getattr(app, "user_middleware", ())):
        return
    stack = getattr(app, "middleware_stack", None)
    if stack is None:
        return
    if isinstance(stack, ServerErrorMiddleware):
        stack.app = MicroMiddleware(stack.app, service=service)
    else:
        app.middleware_stack = MicroMiddleware(stack, service=service)


def service_of_app(app: Any) -> Service | None:
    """The ``Service`` of ``app``: the one its ``MicroMiddleware`` got, or the one whose
    ``lifespan`` it runs (``FastAPI(lifespan=service.lifespan)``); ``None`` when neither."""
    for middleware in getattr(app, "user_middleware", ()):
        service = middleware.kwargs.get("service")
        if isinstance(service, Service):
            return service
    return _bound_service(getattr(getattr(app, "router", None), "lifespan_context", None), 0)


def _bound_service(value: Any, depth: int) -> Service | None:
    """The service a lifespan is a bound method of, looked for through the closures that
    FastAPI wraps lifespans in (``include_router`` merges them)."""
    owner = getattr(value, "__self__", None)
    if isinstance(owner, Service):
        return owner
    if depth > 4 or not isinstance(value, types.FunctionType) or value.__closure__ is None:
        return None
    for cell in value.__closure__:
        with contextlib.suppress(ValueError):  # an empty cell
            found = _bound_service(cell.cell_contents, depth + 1)
            if found is not None:
                return found
    return None
