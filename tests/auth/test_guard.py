"""The guard in a running service: when auth is on, what it decides on each protocol, the
caller's identity, the service's own token, trusted registrations and keys learnt from peers."""

from __future__ import annotations

import contextlib
import logging
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import FastAPI, WebSocket
from joserfc import jws
from pydantic import BaseModel

from asgi_micro import MicroRouter, Service, auth
from asgi_micro.auth import Resource, Rule
from asgi_micro.auth.guard import Guard
from asgi_micro.auth.jwt import JWTAuth
from asgi_micro.auth.keys import KeyRing
from asgi_micro.broker.base import DEAD_SUFFIX
from asgi_micro.client import Client
from asgi_micro.context import Context as CallContext
from asgi_micro.errors import Forbidden, ServiceUnavailable, Unauthorized
from asgi_micro.fastapi import Account, Context, OptionalAccount, require_scopes
from asgi_micro.registry import Node
from asgi_micro.registry import Service as ServiceRecord
from asgi_micro.registry.memory import MemoryRegistry
from asgi_micro.store.memory import MemoryStore
from tests.helpers import eventually, serve


class Name(BaseModel):
    name: str


class Reply(BaseModel):
    text: str


def greeter_router() -> MicroRouter:
    router = MicroRouter("Greeter")

    @router.rpc()
    async def hello(req: Name, ctx: Context, who: OptionalAccount) -> Reply:
        caller = ctx.metadata.get("from-service", "")
        return Reply(text=f"{req.name} by {who.id if who else '-'} via {caller or '-'}")

    @router.rpc()
    async def me(req: Name, account: Account) -> Reply:
        return Reply(text=account.id)

    @router.rpc()
    async def admin(req: Name, account: Annotated[auth.Account, require_scopes("admin")]) -> Reply:
        return Reply(text=f"admin {account.id}")

    return router


def app_of(service: Service) -> FastAPI:
    app = FastAPI(lifespan=service.lifespan)
    app.include_router(greeter_router())

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item": item_id}

    @app.websocket("/ws")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hello")
        await websocket.close()

    return app


class Deployment:
    """Services sharing one registry, one store for the rules, one memory broker and, unless
    told otherwise, one key ring."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.registry = MemoryRegistry()
        self.store = MemoryStore()
        self.broker = f"memory://{uuid.uuid4().hex}"
        self.ring = tmp_path / "keys.json"

    def service(
        self, name: str, *, ring: Path | None = None, auth_url: str | None = None
    ) -> Service:
        return Service(
            f"{name}-{uuid.uuid4().hex[:8]}",
            registry=self.registry,
            store=self.store,
            broker=self.broker,
            auth=auth_url or f"jwt://?keys={ring or self.ring}",
            grpc=False,
        )

    @contextlib.asynccontextmanager
    async def serving(self, service: Service) -> AsyncIterator[str]:
        async with self.registry, self.store:
            service.address = None
            app = app_of(service)
            async with serve(app) as address:
                await service.wait_registered()
                yield address


@pytest.fixture
def deployment(tmp_path: Path) -> Deployment:
    return Deployment(tmp_path)


async def post(
    address: str, path: str, body: Any, token: str | None = None, **headers: str
) -> httpx.Response:
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    async with httpx.AsyncClient(base_url=f"http://{address}") as http:
        return await http.post(path, json=body, headers=headers)


async def user(service: Service, id: str = "ada", scopes: tuple[str, ...] = ("user",)) -> str:
    account = await service.auth.generate(id, scopes=scopes)
    tokens = await service.auth.token(id=id, secret=account.secret)
    return tokens.access_token


async def test_zero_config_is_open_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    service = Service(
        f"open-{uuid.uuid4().hex[:8]}",
        registry="memory://",
        store="memory://",
        broker="memory://",
        grpc=False,
    )
    assert not service.guard.on
    assert service.pipeline.wrappers == ()  # nothing in the way of the fast paths
    assert service.pipeline.observers == (service.metrics.served,)  # which metrics keep
    with caplog.at_level(logging.WARNING):
        async with serve(app_of(service)) as address:
            assert "auth is open" in caplog.text
            reply = await post(
                address, "/greeter/hello", {"name": "x"}, **{"micro-from-service": "billing"}
            )
            assert reply.json() == {"text": "x by - via billing"}  # auth off: the header is taken
            # A handler that asks for the account still gets a verified one.
            token = service.auth.issue(auth.Account("ada"), expiry=60)
            assert (await post(address, "/greeter/me", {"name": "x"}, token)).json() == {
                "text": "ada"
            }
            assert (await post(address, "/greeter/me", {"name": "x"})).status_code == 401
    assert not (tmp_path / ".micro" / "store.db").exists()


async def test_deny_by_default_is_one_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MICRO_AUTH_DEFAULT", "deny")
    monkeypatch.setenv("MICRO_AUTH_KEYS", str(tmp_path / "keys.json"))
    service = Service(
        f"deny-{uuid.uuid4().hex[:8]}",
        registry="memory://",
        store="memory://",
        broker="memory://",
        grpc=False,
    )
    assert service.guard.on
    assert service.guard.enforcing
    async with serve(app_of(service)) as address:
        token = await user(service)
        assert (await post(address, "/greeter/hello", {"name": "x"})).status_code == 401
        assert (await post(address, "/greeter/hello", {"name": "x"}, token)).status_code == 403
        async with httpx.AsyncClient(base_url=f"http://{address}") as http:
            assert (await http.get("/items/1")).status_code == 401
            assert (await http.get("/_micro/health")).status_code == 200
            assert (await http.get("/.well-known/jwks.json")).status_code == 200
            assert (await http.get("/_micro/stats")).status_code == 401


async def test_on_without_rules_allows_all_but_names_only_verified_callers(
    deployment: Deployment,
) -> None:
    service = deployment.service("greeter")
    async with deployment.serving(service) as address:
        assert not service.guard.enforcing
        spoofed = await post(
            address, "/greeter/hello", {"name": "x"}, **{"micro-from-service": "billing"}
        )
        assert spoofed.json() == {"text": "x by - via -"}
        # The service calling itself: its own token names it.
        reply = await service.client.call(service.name, "Greeter.Hello", {"name": "y"})
        assert reply == {"text": f"y by {service.name} via {service.name}"}


async def test_rules_decide_on_rpcs_routes_websockets_and_dependencies(
    deployment: Deployment,
) -> None:
    service = deployment.service("greeter")
    async with deployment.serving(service) as address:
        name = service.name
        await service.auth.grant(Rule("users", "user", Resource("service", name, "Greeter.*")))
        await service.auth.grant(Rule("items", "*", Resource("service", name, "GET /items/*")))
        await service.auth.grant(Rule("ws", "", Resource("service", name, "WEBSOCKET /ws")))
        await service.guard.load_rules()
        ada = await user(service)
        root = await user(service, "root", ("user", "admin"))
        assert (await post(address, "/greeter/me", {"name": "x"}, ada)).json() == {"text": "ada"}
        assert (await post(address, "/greeter/me", {"name": "x"})).status_code == 401
        denied = await post(address, "/greeter/admin", {"name": "x"}, ada)
        assert denied.status_code == 403
        assert "lacks the scope(s) admin" in denied.json()["detail"]
        assert (await post(address, "/greeter/admin", {"name": "x"}, root)).json() == {
            "text": "admin root"
        }
        async with httpx.AsyncClient(base_url=f"http://{address}") as http:
            assert (await http.get("/items/3")).status_code == 401
            ok = await http.get("/items/3", headers={"authorization": f"Bearer {ada}"})
            assert ok.json() == {"item": 3}
        # No rule names the service's own account: its call to itself is refused too.
        with pytest.raises(Forbidden):
            await service.client.call(name, "Greeter.Hello", {"name": "y"})


async def test_a_websocket_route_without_a_grant_is_refused_before_the_handshake(
    deployment: Deployment,
) -> None:
    import websockets

    service = deployment.service("greeter")
    async with deployment.serving(service) as address:
        await service.auth.grant(Rule("none", "admin", Resource("service", service.name, "*")))
        await service.guard.load_rules()
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with websockets.connect(f"ws://{address}/ws"):
                pass
        assert refused.value.response.status_code == 403  # a refusal before the handshake


async def test_events_carry_the_publishers_identity_and_are_checked(
    deployment: Deployment,
) -> None:
    b = deployment.service("b")
    a = deployment.service("a")
    topic = f"user.created.{uuid.uuid4().hex[:8]}"
    seen: list[tuple[str, str]] = []

    @b.subscribe(topic)
    async def on_user(event: Name, ctx: Context) -> None:
        seen.append((event.name, ctx.metadata.get("from-service", "")))

    dead: list[dict[str, str]] = []
    async with deployment.serving(b), a:
        await b.auth.grant(
            Rule("a-publishes", f"service:{a.name}", Resource("topic", b.name, topic))
        )
        await b.guard.load_rules()
        subscription = await b.broker.subscribe(
            topic + DEAD_SUFFIX, lambda event: _record(dead, event)
        )
        copies: list[dict[str, str]] = []
        tap = await b.broker.subscribe(topic, lambda event: _record(copies, event))
        await a.publish(topic, Name(name="ada"))
        await eventually(_true(lambda: seen and copies), message="the granted event")
        assert seen == [("ada", a.name)]
        # What a subscriber holds is a token for that one event: no good for a call.
        token = copies[0]["authorization"].removeprefix("Bearer ")
        assert jws.extract_compact(token.encode()).protected["typ"] == "event+jwt"
        with pytest.raises(Unauthorized, match="not an access token"):
            b.auth.verify_token(token)
        with pytest.raises(Unauthorized, match="made for another event"):
            b.auth.verify_event(token, topic=topic, event_id="other", body=b'{"name":"ada"}')
        await b.broker.unsubscribe(tap)
        # The same topic from the broker directly, with no token: refused, dead-lettered.
        await b.broker.publish(topic, b'{"name": "eve"}', headers={"micro-from-service": a.name})
        await eventually(_true(lambda: dead), message="the refused event dead-lettered")
        assert seen == [("ada", a.name)]
        assert "401" in str(dead[0]) or "token" in str(dead[0])
        await b.broker.unsubscribe(subscription)


async def _record(into: list[dict[str, str]], event: Any) -> None:
    into.append(dict(event.headers))


def _true(value: Any) -> Any:
    async def check() -> Any:
        return value()

    return check


async def test_clients_skip_nodes_whose_registration_does_not_verify(
    deployment: Deployment, tmp_path: Path
) -> None:
    service = deployment.service("greeter")
    async with deployment.serving(service):
        [real] = service.record().nodes
        assert "auth" in real.metadata
        # A stranger with a ring of its own proves itself, to its own deployment only.
        stranger_ring = auth.jwt.JWTAuth(keys=KeyRing(tmp_path / "stranger.json"))
        stranger = auth.guard.Guard(stranger_ring, service=service.name, on=True)
        fake = Node("stranger", "127.0.0.1:9", {})
        fake.metadata.update(stranger.proof(fake))
        copied = Node("copied", "127.0.0.1:9", {"auth": real.metadata["auth"]})
        bare = Node("bare", "127.0.0.1:9", {})
        for node in (fake, copied, bare):
            await deployment.registry.register(ServiceRecord(service.name, nodes=[node]), ttl=30)
            assert not service.trusts_node(service.name, node)
        assert service.trusts_node(service.name, real)
        assert not service.trusts_node("billing", real)  # a proof names its service
        for _ in range(30):
            await service.client.call(service.name, "Greeter.Hello", {"name": "x"})
        # A client without the guard would have picked the strangers' nodes (and failed).
        plain = Client(registry=deployment.registry, retries=0)
        try:
            picked = {
                (await plain._select(service.name, set(), None, None, None, None)).id
                for _ in range(60)
            }
        finally:
            await plain.aclose()
        assert picked & {"stranger", "copied", "bare"}
        await deployment.registry.deregister(ServiceRecord(service.name, nodes=[real]))

        async def refused() -> bool:
            try:
                await service.client.call(service.name, "Greeter.Hello", {"name": "x"}, retries=0)
            except ServiceUnavailable as exc:
                return "none whose registration verifies" in exc.detail
            return False

        await eventually(refused, message="only the strangers' nodes left: no call")


async def test_a_rotation_elsewhere_is_learnt_from_the_peers_jwks(deployment: Deployment) -> None:
    # Two copies of one ring, as two hosts would hold: one rotates, the other has not read it.
    KeyRing(deployment.ring).load()
    copy = deployment.tmp_path / "copy.json"
    shutil.copy(deployment.ring, copy)
    b = deployment.service("b", ring=copy)
    a = deployment.service("a")
    async with deployment.serving(b) as b_address, deployment.serving(a):
        await b.auth.grant(Rule("a", f"service:{a.name}", Resource("service", b.name, "*")))
        await b.guard.load_rules()
        assert (await a.client.call(b.name, "Greeter.Hello", {"name": "x"}))["text"].endswith(
            a.name
        )
        KeyRing(deployment.ring).rotate()
        assert a.auth.reload_keys()  # as A's guard does every few seconds
        a.guard._mint()  # the next token of A, with the new key
        assert a.auth.keys.signing.kid not in {key.kid for key in b.auth.keys}  # type: ignore[attr-defined]
        rotated = await a.client.call(b.name, "Greeter.Hello", {"name": "y"})
        assert rotated == {"text": f"y by {a.name} via {a.name}"}
        # Tokens with made-up kids make no fetch storm: one fetch per interval per service.
        teacher, fetches = b.guard.teacher, []

        async def counted(service: str) -> Any:
            fetches.append(service)
            assert teacher is not None
            return await teacher(service)

        b.guard.teacher = counted
        stranger = JWTAuth(keys=KeyRing(deployment.tmp_path / "stranger.json"))
        forged = stranger.issue(a.guard.account, expiry=60)
        for _ in range(5):
            refused = await post(b_address, "/greeter/me", {"name": "x"}, forged)
            assert refused.status_code == 401
        assert fetches == []


async def test_noop_is_off(deployment: Deployment) -> None:
    service = deployment.service("greeter", auth_url="noop://")
    assert not service.guard.on
    with pytest.raises(Exception, match="auth is off"):
        await service.auth.generate("ada")


class Clock:
    """``time.time`` as the test says."""

    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_an_admitted_token_is_admitted_again_until_it_expires_or_the_rules_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guard remembers what it admitted (a look-up per call), and forgets it when the
    token expires and when the rules change."""
    clock = Clock()
    monkeypatch.setattr("time.time", clock)
    jwt_auth = JWTAuth(store=MemoryStore(), keys=KeyRing(tmp_path / "keys.json"), leeway=0)
    guard = Guard(jwt_auth, service="greeter", on=True)
    asked: list[str] = []
    verified = jwt_auth.verified

    def counted(token: str) -> tuple[auth.Account, float]:
        asked.append(token)
        return verified(token)

    monkeypatch.setattr(jwt_auth, "verified", counted)
    async with jwt_auth:
        await jwt_auth.grant(Rule("users", "user", Resource("service", "greeter", "Greeter.*")))
        await guard.load_rules()
        ada = "Bearer " + jwt_auth.issue(auth.Account("ada", scopes=("user",)), expiry=60)
        billing = "Bearer " + jwt_auth.issue(
            auth.Account("billing", "service", ("user",)), expiry=60
        )

        def admit(authorization: str | None, endpoint: str = "Greeter.Hello") -> CallContext:
            context = CallContext({"from-service": "forged"}, authorization=authorization)
            assert guard.admit(context, endpoint, "http") is None
            return context

        for _ in range(3):
            assert admit(ada).account.id == "ada"
            assert "from-service" not in admit(ada).metadata  # dropped on every call
            assert admit(billing).metadata["from-service"] == "billing"
        assert len(asked) == 2  # each token verified once
        admit(ada, "Greeter.Bye")  # another endpoint: decided on its own
        with pytest.raises(Unauthorized):
            admit(None)
        with pytest.raises(Unauthorized):
            admit(None)  # a refusal is never remembered
        # Expired: verified again, and refused.
        clock.now += 61
        with pytest.raises(Unauthorized, match="expired"):
            admit(ada)
        clock.now -= 61
        # The rules change: what was admitted is decided again.
        await jwt_auth.delete_rule("users")
        await jwt_auth.grant(Rule("users", "admin", Resource("service", "greeter", "Greeter.*")))
        await guard.load_rules()
        with pytest.raises(Forbidden):
            admit(ada)
