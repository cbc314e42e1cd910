"""Several services in one process and one event loop: ``asgi-micro run a.py b.py``.

    from asgi_micro.group import ServiceGroup

    async with ServiceGroup(greeter_app, frontend_app, ports=8000) as group:
        ...                                     # greeter on :8000, frontend on :8001

    asgi_micro.group.serve(greeter_app, frontend_app)   # a script's whole main: until Ctrl-C

Each app is served by a uvicorn server of its own (``MicroHttpProtocol``, lifespan on) on a port
of its own, and its ``Service`` registers its own node there with a gRPC port of its own: to the
registry they are separate nodes, as if each ran in its own process, and they call each other by
name like any nodes (in process, skipping sockets, where ``asgi_micro.local`` can). Ports are
bound before any app starts, so each service knows its address (``service.address``) before it
registers, ``0`` (any free port) included.

The group takes SIGINT and SIGTERM for all its servers: on the first, every service drains at
once (``asgi_micro.signals``), then every server stops; a second SIGINT stops them without
waiting for open connections. When one app fails to start, or one server stops by itself, the
group stops the others and ``serve`` raises ``GroupError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import uvicorn

from .limits import ServerLimits
from .server import MicroHttpProtocol
from .service import Service, service_of_app
from .settings import Settings
from .types import ASGIApp

__all__ = ["GroupError", "Member", "ServiceGroup", "serve"]

logger = logging.getLogger(__name__)

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GroupError(RuntimeError):
    """A member of a group failed to start, or stopped by itself; the others were stopped."""


class _Server(uvicorn.Server):
    """A uvicorn server that leaves the signals to its group and says when it listens."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.up = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the group's handler stops every server; one server's would stop only itself

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.up.set()


@dataclass
class Member:
    """One app of a group: its service (``None`` for an app without one), and where it
    serves once the group has started."""

    app: ASGIApp
    service: Service | None
    name: str
    port: int
    """The port asked for (``0``: any free one); the one bound, once started."""
    host: str = "127.0.0.1"
    _server: _Server | None = field(default=None, init=False, repr=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False, repr=False)

    @property
    def address(self) -> str:
        """``host:port`` of its HTTP server."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"


class ServiceGroup:
    """Serve several apps in this event loop, each on its own port with its own node.

    ``apps`` are ASGI apps whose ``Service`` is found as ``asgi_micro.testing.Cluster`` finds
    it (the ``MicroMiddleware``'s, or the one whose ``lifespan`` the app runs; an app with
    neither is served without a service), or ``(app, service)`` pairs. ``ports`` is
    the first app's port, the next ones taking the ports after it (``0``: each any free port),
    or one port per app. ``limits`` bound each connection (default: the ``MICRO_*``
    settings, as ``asgi-micro run`` serves)."""

    def __init__(
        self,
        *apps: ASGIApp | tuple[ASGIApp, Service | None],
        host: str = "127.0.0.1",
        ports: int | Sequence[int] = 0,
        names: Sequence[str] | None = None,
        limits: ServerLimits | None = None,
        keep_alive_timeout: int = 5,
    ) -> None:
        if not apps:
            raise ValueError("a ServiceGroup serves one app or more, got none")
        if isinstance(ports, int):
            ports = [ports + index if ports else 0 for index in range(len(apps))]
        if len(ports) != len(apps) or (names is not None and len(names) != len(apps)):
            raise ValueError(f"{len(apps)} apps need as many ports and names")
        self.host = host
        self.members = [
            _member(app, index, port, host, names[index] if names is not None else None)
            for index, (app, port) in enumerate(zip(apps, ports, strict=True))
        ]
        _check_distinct(self.members)
        self._http = MicroHttpProtocol.with_limits(limits) if limits else MicroHttpProtocol
        self._keep_alive_timeout = keep_alive_timeout
        self._previous_handlers: dict[int, Any] = {}
        self._stopping = False
        self._started = False

    def member(self, name: str) -> Member:
        """The member called ``name`` (its service's name)."""
        for member in self.members:
            if member.name == name:
                return member
        raise KeyError(f"no member {name!r} in this group: {[m.name for m in self.members]}")

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind every port, then start every app at once, and return when all serve; when
        one fails, stop those that started and raise ``GroupError``. Idempotent."""
        if self._started:
            return
        sockets = _bind_all(self.members)  # a port in use fails here, before any app starts
        self._started, self._stopping = True, False
        self._capture_signals()
        for member, sock in zip(self.members, sockets, strict=True):
            member.port = sock.getsockname()[1]
            if member.service is not None:
                member.service.address = member.address  # where it registers, before it starts
            member._server = _Server(self._config(member))
            member._task = asyncio.create_task(
                _serve(member._server, sock), name=f"asgi-micro group {member.name}"
            )
        try:
            failed = await self._wait_up()
        except BaseException:  # cancelled while starting: nothing may be left serving
            await self.stop()
            raise
        if failed is not None:
            await self.stop()
            raise GroupError(f"{failed.name} failed to start; stopped the others") from None
        for member in self.members:
            logger.info("%s serves on %s%s", member.name, member.url, _grpc_of(member))

    async def stop(self) -> None:
        """Stop every server (each service drains and deregisters in its lifespan), and give
        the signals back. Idempotent."""
        if not self._started:
            return
        self._stopping = True
        for member in self.members:
            if member._server is not None:
                member._server.should_exit = True
        await asyncio.gather(*self._tasks(), return_exceptions=True)
        for member in self.members:
            member._server = member._task = None
        self._restore_signals()
        self._started = False

    async def serve(self) -> None:
        """Start, serve until a signal (or until a server stops by itself: then the others
        stop too, and this raises ``GroupError``), then stop."""
        await self.start()
        try:
            done, _ = await asyncio.wait(self._tasks(), return_when=asyncio.FIRST_COMPLETED)
            stopped = [m for m in self.members if m._task in done]
            if not self._stopping:
                raise GroupError(f"{stopped[0].name} stopped; stopped the others")
        finally:
            await self.stop()

    async def __aenter__(self) -> ServiceGroup:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- inside -----------------------------------------------------------------------------

    def _config(self, member: Member) -> uvicorn.Config:
        max_message_size = (
            member.service.max_message_size
            if member.service is not None
            else Settings().max_message_size
        )
        return uvicorn.Config(
            member.app,
            host=member.host,
            port=member.port,
            http=self._http,
            ws_max_size=max_message_size,
            timeout_keep_alive=self._keep_alive_timeout,
            lifespan="on",
            log_config=None,  # logging is the program's (asgi-micro run configures it)
        )

    def _tasks(self) -> list[asyncio.Task[None]]:
        return [member._task for member in self.members if member._task is not None]

    async def _wait_up(self) -> Member | None:
        """Wait until every server listens; the first member that fails first, if any."""

        async def up(server: _Server, serving: asyncio.Task[None]) -> None:
            listening = asyncio.ensure_future(server.up.wait())
            await asyncio.wait({listening, serving}, return_when=asyncio.FIRST_COMPLETED)
            listening.cancel()
            if not server.up.is_set():
                raise GroupError("stopped before it listened")

        waiting = {
            asyncio.ensure_future(up(member._server, member._task)): member
            for member in self.members
            if member._server is not None and member._task is not None
        }
        done, pending = await asyncio.wait(waiting, return_when=asyncio.FIRST_EXCEPTION)
        for task in pending:
            task.cancel()
        failed = [waiting[task] for task in done if task.exception() is not None]
        return failed[0] if failed else None

    def _capture_signals(self) -> None:
        """Take SIGINT and SIGTERM for every server (the services put their drains in front
        once their lifespans start); only in the main thread, where signals arrive."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in _SIGNALS:
            self._previous_handlers[signum] = signal.signal(signum, self._on_exit_signal)

    def _restore_signals(self) -> None:
        while self._previous_handlers:
            signum, handler = self._previous_handlers.popitem()
            signal.signal(signum, handler)

    def _on_exit_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True
        for member in self.members:
            if member._server is not None:
                member._server.handle_exit(signum, frame)  # a second SIGINT: without waiting


def serve(
    *apps: ASGIApp | tuple[ASGIApp, Service | None],
    host: str = "127.0.0.1",
    ports: int | Sequence[int] = 8000,
    keep_alive_timeout: int = 5,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> None:
    """Serve ``apps`` in one process until SIGINT or SIGTERM: a script's whole main (see
    ``ServiceGroup``); uvloop unless ``loop_factory`` says otherwise."""
    if loop_factory is None:
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        group = ServiceGroup(*apps, host=host, ports=ports, keep_alive_timeout=keep_alive_timeout)
        runner.run(group.serve())


async def _serve(server: _Server, sock: socket.socket) -> None:
    try:
        await server.serve(sockets=[sock])
    except SystemExit:  # uvicorn's way of saying startup failed (it logged why)
        raise GroupError("startup failed") from None
    finally:
        sock.close()


def _member(
    app: ASGIApp | tuple[ASGIApp, Service | None],
    index: int,
    port: int,
    host: str,
    name: str | None,
) -> Member:
    if isinstance(app, tuple):
        app, service = app
    else:  # a plain app, or one that starts its service itself, has none: pass a pair
        service = service_of_app(app)
    name = name or (service.name if service is not None else f"app {index + 1}")
    return Member(app=app, service=service, name=name, port=port, host=host)


def _check_distinct(members: list[Member]) -> None:
    """One app, one node: the same app (or service) twice would register one node twice."""
    apps = [id(member.app) for member in members]
    services = [id(member.service) for member in members if member.service is not None]
    if len(set(apps)) != len(apps) or len(set(services)) != len(services):
        raise ValueError("each app of a group must be another app, with its own Service")


def _bind_all(members: list[Member]) -> list[socket.socket]:
    """A listening socket per member, or none: a port that cannot be bound raises
    ``GroupError`` naming it, and the ones bound already are closed."""
    sockets: list[socket.socket] = []
    try:
        for member in members:
            sockets.append(_bind(member))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _bind(member: Member) -> socket.socket:
    family = socket.AF_INET6 if ":" in member.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((member.host, member.port))
    except OSError as exc:
        sock.close()
        raise GroupError(
            f"{member.name}: cannot serve on {member.address}: {exc.strerror or exc}"
        ) from None
    sock.set_inheritable(True)
    return sock


def _grpc_of(member: Member) -> str:
    grpc = member.service.grpc_server if member.service is not None else None
    return f", gRPC on {grpc.address}" if grpc is not None and grpc.address else ""
