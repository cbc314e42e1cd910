"""An in-process cluster of the user's own services, for their tests, with faults to inject.

    from asgi_micro.testing import Cluster

    async def test_the_frontend_survives_a_slow_greeter() -> None:
        async with Cluster(greeter_app, frontend_app) as cluster:
            cluster.node("greeter").delay(0.5)
            async with cluster.http("frontend") as http:
                response = await http.get("/welcome/Ada")

Each app's ``Service`` (the one its ``MicroMiddleware`` got, or whose ``lifespan`` it runs) is
rebound to the cluster's in-memory backends (one ``memory://`` registry, broker, store and
locks, shared by the cluster's services and nobody else's) and served on uvicorn on a free
loopback port: the real pipeline, wrappers, middleware and client, with calls between the
cluster's services made in process (``asgi_micro.local``) where the endpoint allows and over
loopback where it does not.

Faults sit in every cluster service's client, ahead of each attempt on a node, where a network
or a failing node would show (so retries, ejection, breakers and fallbacks react to them as to
the real thing):

- ``node(name).delay(seconds)``: the node answers that much later (past the attempt's time,
  the attempt times out);
- ``node(name).fail(code, detail)``: the node answers with that error (``503``, ``500``...);
- ``node(name).drop()``: calls to it get no answer: each attempt times out;
- ``partition(a, b)``: calls between services ``a`` and ``b``, either way, get no answer;
- ``node(name).kill()``: it stops at once, without draining, and leaves the registry;
  ``node(name).crash()``: the same, but its registration stays until its TTL runs out, as a
  killed process's does; ``restart()`` serves it again, registered anew;
- ``heal()``: every fault gone (``node(name).heal()`` for one node's).

``cluster.events(topic)`` captures what is published on a topic; ``cluster.client`` calls the
cluster's services as a test would from outside (faults apply to it too).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import uvicorn

from ..broker.base import Event
from ..errors import CLIENT_ID, ConnectionFailed, Timeout, error_for_status
from ..registry import Node
from ..registry.memory import MemoryRegistry
from ..service import Service
from ..service import service_of_app as find_service
from ..store.memory import MemoryStore
from ..sync.memory import MemorySync
from . import free_port, listening_socket

if TYPE_CHECKING:
    import socket

    from ..broker import Broker
    from ..client import Client
    from ..types import ASGIApp

__all__ = ["Cluster", "ClusterNode", "Events", "service_of_app"]


@dataclass(slots=True)
class _Fault:
    delay: float = 0.0
    error: tuple[int, str] | None = None
    dropped: bool = False
    refused: bool = False


@dataclass
class _Faults:
    """The faults of one cluster, by service name and by pair of services."""

    nodes: dict[str, _Fault] = field(default_factory=dict)
    partitions: set[frozenset[str]] = field(default_factory=set)

    async def before(
        self, caller: str | None, service: str, node: Node, seconds: float | None
    ) -> None:
        fault = self.nodes.get(service)
        cut = caller is not None and frozenset((caller, service)) in self.partitions
        if fault is None and not cut:
            return
        if fault is not None and fault.refused:
            raise ConnectionFailed(f"connecting to {node.address}: refused", id=CLIENT_ID)
        if cut or (fault is not None and fault.dropped):
            await _no_answer(service, seconds)
        assert fault is not None
        if fault.delay:
            if seconds is not None and fault.delay >= seconds:
                await _no_answer(service, seconds)
            await asyncio.sleep(fault.delay)
        if fault.error is not None:
            code, detail = fault.error
            raise error_for_status(code)(detail, id=service)


async def _no_answer(service: str, seconds: float | None) -> None:
    """What an attempt on a node that never answers ends with: its time runs out."""
    if seconds is None:
        raise ConnectionFailed(f"no answer from {service}", id=CLIENT_ID)
    await asyncio.sleep(max(seconds, 0))
    raise Timeout(f"no complete response from {service} in time", id=CLIENT_ID)


class ClusterNode:
    """One service of the cluster: its ``service``, where it serves (``address``), and the
    faults and lifecycle a test drives."""

    def __init__(self, cluster: Cluster, app: ASGIApp, service: Service) -> None:
        self.cluster = cluster
        self.app = app
        self.service = service
        self.address = f"127.0.0.1:{free_port()}"
        self._server: uvicorn.Server | None = None
        self._serving: asyncio.Task[None] | None = None
        self._started_once = False

    @property
    def name(self) -> str:
        return self.service.name

    @property
    def _fault(self) -> _Fault:
        return self.cluster._faults.nodes.setdefault(self.name, _Fault())

    def delay(self, seconds: float) -> ClusterNode:
        """Answer ``seconds`` later than it would."""
        self._fault.delay = seconds
        return self

    def fail(self, code: int = 503, detail: str = "injected failure") -> ClusterNode:
        """Answer every call with the error of ``code``."""
        self._fault.error = (code, detail)
        return self

    def drop(self) -> ClusterNode:
        """Never answer: each attempt runs out of time."""
        self._fault.dropped = True
        return self

    def heal(self) -> ClusterNode:
        """This node's faults gone."""
        self.cluster._faults.nodes.pop(self.name, None)
        return self

    async def start(self) -> None:
        """Serve the app on uvicorn (its lifespan starts the service, which registers)."""
        sock = await self._bind()
        self.service.address = self.address
        host, port = sock.getsockname()[:2]
        config = uvicorn.Config(self.app, host=host, port=port, lifespan="on", log_level="warning")
        self._server = server = uvicorn.Server(config)
        self._serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if self._serving.done():
                sock.close()
                await self._serving
                raise RuntimeError(f"{self.name} stopped before it served")
            await asyncio.sleep(0.01)
        self._started_once = True
        await self.service.wait_registered()
        client = self.service.client  # the service's own, as its handlers use it
        client.faults = self.cluster._faults
        client.local = self.cluster.local

    async def _bind(self) -> socket.socket:
        """The listening socket, bound here rather than by uvicorn, which exits the process on a
        port somebody took since it was chosen. A first start takes another port then; a
        restart keeps its address (the test may hold it) and waits a little for it."""
        host, _, port = self.address.rpartition(":")
        deadline = time.monotonic() + 5
        while True:
            try:
                return listening_socket(host, int(port))
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} cannot serve on {self.address}") from exc
                if self._started_once:
                    await asyncio.sleep(0.05)
                else:
                    port = str(free_port(host))
                    self.address = f"{host}:{port}"

    async def stop(self) -> None:
        """Stop gracefully: drain, deregister, close."""
        if self._server is None or self._serving is None:
            return
        self._server.should_exit = True
        await self._serving
        self._server = self._serving = None

    async def kill(self) -> None:
        """Stop at once: calls to it are refused from now on, calls in flight are not waited
        for, and it leaves the registry."""
        self._fault.refused = True
        drain_timeout, drain_grace = self.service.drain_timeout, self.service.drain_grace
        self.service.drain_timeout = self.service.drain_grace = 0
        try:
            await self.stop()
        finally:
            self.service.drain_timeout, self.service.drain_grace = drain_timeout, drain_grace

    async def crash(self) -> None:
        """Die as a killed process does: at once, without draining, and with its
        registration left behind until the registry's TTL drops it (the service's
        ``register_ttl`` after its last heartbeat). Meanwhile callers still find the node
        and are refused by it, which is what retries and ejection see of a crashed node."""
        await self.service.registrar.abandon()
        await self.kill()

    async def restart(self) -> None:
        """Serve again after ``kill``, ``crash`` or ``stop``, registered anew; its other
        faults stay."""
        await self.stop()
        self._fault.refused = False
        await self.start()

    def __repr__(self) -> str:
        return f"ClusterNode({self.name!r}, address={self.address!r})"


class Events:
    """Every event published on a topic since the capture began (``cluster.events``)."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.received: list[Event] = []
        self._arrived = asyncio.Condition()

    async def _take(self, event: Event) -> None:
        async with self._arrived:
            self.received.append(event)
            self._arrived.notify_all()

    async def wait(self, count: int = 1, timeout: float = 5.0) -> list[Event]:
        """The first ``count`` events, once they are in (``TimeoutError`` after
        ``timeout`` seconds)."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: len(self.received) >= count)
        return self.received[:count]

    def __len__(self) -> int:
        return len(self.received)


class Cluster:
    """The user's apps as services of one in-process cluster (see the module's docstring).

    ``apps`` are ASGI apps, or ``(app, service)`` pairs where the service cannot be found
    from the app. ``local=False`` sends the calls between them over loopback rather than in
    process."""

    def __init__(self, *apps: ASGIApp | tuple[ASGIApp, Service], local: bool = True) -> None:
        if not apps:
            raise ValueError("a cluster of no app: pass the apps to run")
        self.name = f"cluster-{uuid.uuid4().hex[:12]}"
        self.local = local
        self.registry = MemoryRegistry()
        self.store = MemoryStore()
        self.sync = MemorySync()
        self.broker_url = f"memory://{self.name}"
        self._faults = _Faults()
        self._apps = [_with_service(app) for app in apps]
        self._nodes: dict[str, ClusterNode] = {}
        self._client: Client | None = None
        self._captures: list[Broker] = []
        self._previous: dict[Service, dict[str, Any]] = {}

    async def start(self) -> None:
        await self.registry.start()
        await self.store.start()
        await self.sync.start()
        try:
            for app, service in self._apps:
                if service.name in self._nodes:
                    raise ValueError(f"two apps of one service {service.name!r} in a cluster")
                self._previous[service] = service.rebind(
                    registry=self.registry,
                    store=self.store,
                    sync=self.sync,
                    broker=self.broker_url,
                    database="sqlite://",
                )
                node = self._nodes[service.name] = ClusterNode(self, app, service)
                await node.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for broker in self._captures:
            await broker.stop()
        self._captures.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        for node in reversed(list(self._nodes.values())):
            await node.stop()
        for service, previous in self._previous.items():
            service.rebind(**previous)  # as the app's module made it, for whoever serves it next
        self._previous.clear()
        await self.sync.stop()
        await self.store.stop()
        await self.registry.stop()

    async def __aenter__(self) -> Cluster:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- what a test reaches for ----------------------------------------------------------------

    def node(self, service: str) -> ClusterNode:
        """The node of ``service``."""
        try:
            return self._nodes[service]
        except KeyError:
            raise KeyError(
                f"no service {service!r} in this cluster (it has {', '.join(self._nodes)})"
            ) from None

    @property
    def nodes(self) -> list[ClusterNode]:
        return list(self._nodes.values())

    def partition(self, a: str, b: str) -> None:
        """Calls between services ``a`` and ``b`` (either way) get no answer until
        ``heal``."""
        self._faults.partitions.add(frozenset((a, b)))

    def heal(self) -> None:
        """Every fault gone: nodes answer at once again and partitions close."""
        self._faults.nodes = {
            name: _Fault(refused=fault.refused)  # a killed node stays down until restarted
            for name, fault in self._faults.nodes.items()
            if fault.refused
        }
        self._faults.partitions.clear()

    @property
    def client(self) -> Client:
        """A client of the cluster, as a test calls it from outside (faults apply)."""
        if self._client is None:
            from ..client import Client

            self._client = Client(registry=self.registry, local=self.local)
            self._client.faults = self._faults
        return self._client

    def http(self, service: str, **options: Any) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` on the node of ``service`` (its plain routes, as a browser
        or another system reaches them); use it with ``async with``."""
        return httpx.AsyncClient(base_url=f"http://{self.node(service).address}", **options)

    async def events(self, topic: str) -> Events:
        """Capture from now on every event published on ``topic`` in the cluster."""
        from ..broker.memory import MemoryBroker

        broker = MemoryBroker(self.broker_url)
        await broker.start()
        self._captures.append(broker)
        events = Events(topic)
        await broker.subscribe(topic, events._take)
        return events


def service_of_app(app: Any) -> Service:
    """The ``Service`` of ``app`` (``asgi_micro.service.service_of_app``), or a
    ``TypeError`` saying to pass it along."""
    found = find_service(app)
    if found is None:
        raise TypeError(
            f"cannot tell the Service of {app!r}: pass it as (app, service) to the Cluster"
        )
    return found


def _with_service(app: ASGIApp | tuple[ASGIApp, Service]) -> tuple[ASGIApp, Service]:
    if isinstance(app, tuple):
        return app
    return app, service_of_app(app)
