"""Service identity end to end, each service in a process of its own (``tests/auth/apps``).

A and B share a key ring, a store for the rules and an mDNS domain on loopback; auth is on.
A calls B over HTTP and gRPC and publishes on B's topic through the embedded broker, and B
sees A as its caller because A's token says so, never because a header does. Processes
without the ring are refused on every path: their calls (no token, or one of another ring),
their events (never handled: dropped at the publisher, or refused and dead-lettered), and
their registrations under B's name (A's calls never reach them). No secret, private key or
token shows in the logs or the public routes of a service.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import re
import stat
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest
from joserfc import jwt as joserfc_jwt

from asgi_micro import Client
from asgi_micro.auth import Account, KeyRing, Resource, Rule
from asgi_micro.auth.jwt import JWTAuth
from asgi_micro.codec import message_type
from asgi_micro.errors import AUTH_ID
from asgi_micro.protobuf import message_converter
from asgi_micro.registry import Service as ServiceRecord
from asgi_micro.store import from_url as store_from_url
from tests.auth.apps.common import Ask, Seen
from tests.helpers import eventually, mdns
from tests.processes import ASGI_MICRO, Server

pytestmark = pytest.mark.slow

APPS = "tests/auth/apps"
ASK = message_converter(message_type(Ask))
SEEN = message_converter(message_type(Seen))
_JWT = re.compile(rb"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


class Process(Server):
    """``asgi-micro run`` of one of the apps here, with settings of its own (``env``)."""

    async def health(self) -> dict[str, Any]:
        async with httpx.AsyncClient(trust_env=False) as http:
            found: dict[str, Any] = (await http.get(f"{self.url}/_micro/health")).json()
        return found


def process(app: str, env: Mapping[str, str], *args: str, log: Path | None = None) -> Process:
    """``asgi-micro run tests/auth/apps/<app>.py ARGS``, its output kept in ``log`` if given."""
    if log is None:
        return Process(f"{APPS}/{app}.py", ASGI_MICRO, args, env=env)
    return Process(f"{APPS}/{app}.py", ASGI_MICRO, args, env=env, log=log.open("w+b"))


@contextlib.asynccontextmanager
async def running(*processes: Process) -> AsyncIterator[None]:
    """Start them all, wait until each serves; stop them all (SIGINT) whatever happens."""
    try:
        for each in processes:
            await each.start()
        await asyncio.gather(*(each.ready() for each in processes))
        yield
    finally:
        await asyncio.gather(*(each.close() for each in processes))


@dataclass
class Deployment:
    """One key ring and one store (for accounts and rules) that its services share."""

    root: Path
    ring: Path
    store: str
    names: dict[str, str]

    @classmethod
    def made(cls, root: Path, **names: str) -> Deployment:
        ring = root / "ring" / "keys.json"
        KeyRing(ring).load()
        return cls(root, ring, f"sqlite:///{root / 'store.db'}", names)

    def env(self, name: str, **extra: str) -> dict[str, str]:
        """The settings of a service of the deployment: auth on, the shared ring and store,
        an outbox of its own under the test's directory."""
        return {
            "MICRO_AUTH": "jwt://",
            "MICRO_AUTH_KEYS": str(self.ring),
            "MICRO_STORE": self.store,
            "MICRO_BROKER": f"http://?dir={self.root / name}",
            **self.names,
            **extra,
        }

    @contextlib.asynccontextmanager
    async def auth(self) -> AsyncIterator[JWTAuth]:
        """The deployment's auth as an operator holds it: the ring, and the shared store."""
        store = store_from_url(self.store)
        await store.start()
        auth = JWTAuth(store=store, keys=KeyRing(self.ring, create=False))
        try:
            await auth.start()
            yield auth
        finally:
            await auth.stop()
            await store.stop()


def service_account(name: str) -> Account:
    return Account(name, "service", ("service", f"service:{name}"))


OPERATOR = Account("operator", "user", ("operator",))
OPERATOR_RULE = Rule("operator", "operator", Resource("*", "*", "*"))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def jwt_type(token: bytes) -> str:
    head = token.split(b".", 1)[0]
    header = orjson.loads(base64.urlsafe_b64decode(head + b"=" * (-len(head) % 4)))
    return str(header.get("typ"))


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=10.0) as client:
        yield client


def record_of(response: httpx.Response) -> ServiceRecord:
    assert response.status_code == 200, response.text
    return ServiceRecord.from_dict(response.json())


def grpc_path(record: ServiceRecord, endpoint: str) -> str:
    [found] = [e for e in record.endpoints if e.name == endpoint]
    return found.metadata["grpc"]


def assert_unauthenticated(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["id"] == AUTH_ID


async def test_a_calls_b_as_itself_and_nobody_else_can_claim_to_be_a(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    a, b, topic = unique("ida"), unique("idb"), f"notes.{uuid.uuid4().hex[:10]}"
    deployment = Deployment.made(tmp_path, IDENTITY_A=a, IDENTITY_B=b, IDENTITY_TOPIC=topic)
    other_ring = tmp_path / "other" / "keys.json"
    KeyRing(other_ring).load()
    async with deployment.auth() as auth:
        for rule in (
            Rule("a-calls-b", f"service:{a}", Resource("service", b, "*")),
            Rule("a-tells-b", f"service:{a}", Resource("topic", b, topic)),
            Rule("b-open", "", Resource("service", b, "B.OpenWhoami")),
            Rule("b-dead-letters", "", Resource("topic", b, f"{topic}.dead")),
            Rule("a-faces-the-test", "", Resource("service", a, "*")),
            OPERATOR_RULE,
        ):
            await auth.grant(rule)
        operator = bearer(auth.issue(OPERATOR, expiry=600))
    # A token that claims to be A, signed by a ring the deployment does not have.
    forged = JWTAuth(keys=KeyRing(other_ring)).issue(service_account(a), expiry=600)
    stranger_env = {
        **deployment.names,
        "MICRO_AUTH_KEYS": str(other_ring),
        "MICRO_STORE": "memory://",
    }
    service_a = process("a", deployment.env("a"))
    service_b = process("b", deployment.env("b"))
    # Auth on under a ring of its own: it trusts none of B's nodes, so sends them nothing.
    ringed = process(
        "stranger",
        {
            **stranger_env,
            "IDENTITY_STRANGER": unique("ringed"),
            "MICRO_AUTH": "jwt://",
            "MICRO_BROKER": f"http://?dir={tmp_path / 'ringed'}",
        },
    )
    # Auth off: it trusts any node, and delivers to B events that carry no token.
    tokenless = process(
        "stranger",
        {
            **stranger_env,
            "IDENTITY_STRANGER": unique("tokenless"),
            "MICRO_BROKER": f"http://?dir={tmp_path / 'tokenless'}",
        },
    )

    async with running(service_a, service_b, ringed, tokenless):
        b_node = (await service_b.health())["node"]
        record = record_of(await http.get(f"{service_b.url}/_micro/registry"))
        [b_grpc] = [node.metadata["grpc"] for node in record.nodes]

        # A -> B over HTTP and gRPC: B sees A, from A's verified service token.
        for path in ("/a/call_b_http", "/a/call_b_grpc"):
            response = await http.post(f"{service_a.url}{path}", json={"times": 3})
            assert response.status_code == 200, response.text
            replies = [Seen.model_validate(reply) for reply in response.json()["replies"]]
            assert [(r.from_service, r.account, r.account_type, r.node) for r in replies] == [
                (a, a, "service", b_node)
            ] * 3

        # Anyone else calling B: no token, or A's name set by hand, is a 401.
        for headers in ({}, {"Micro-From-Service": a}):
            assert_unauthenticated(
                await http.post(f"{service_b.url}/b/whoami", json={}, headers=headers)
            )
        assert_unauthenticated(
            await http.post(f"{service_b.url}/b/whoami", json={}, headers=bearer(forged))
        )
        # Where the rules let anyone in, a hand-set name is dropped, not believed.
        opened = await http.post(
            f"{service_b.url}/b/open_whoami", json={}, headers={"Micro-From-Service": a}
        )
        assert opened.status_code == 200, opened.text
        assert Seen.model_validate(opened.json()).from_service is None

        async with grpc.aio.insecure_channel(b_grpc) as channel:
            whoami = channel.unary_unary(grpc_path(record, "B.Whoami"))
            open_whoami = channel.unary_unary(grpc_path(record, "B.OpenWhoami"))
            for metadata in (
                (),
                (("micro-from-service", a),),
                (("authorization", f"Bearer {forged}"), ("micro-from-service", a)),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await whoami(ASK.encode(Ask()), metadata=metadata, timeout=5)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            reply = await open_whoami(
                ASK.encode(Ask()), metadata=(("micro-from-service", a),), timeout=5
            )
            assert SEEN.decode(reply).from_service is None

        # A's event reaches B's subscriber, which sees A as its sender.
        published = await http.post(f"{service_a.url}/a/publish", json={"note": "from-a"})
        assert published.status_code == 200, published.text

        async def events() -> dict[str, list[Seen]]:
            response = await http.get(f"{service_b.url}/received", headers=operator)
            assert response.status_code == 200, response.text
            return {
                kind: [Seen.model_validate(seen) for seen in found]
                for kind, found in response.json().items()
            }

        async def received(kind: str, note: str) -> list[Seen]:
            return [seen for seen in (await events())[kind] if seen.note == note]

        [from_a] = await eventually(
            lambda: received("received", "from-a"), timeout=15, message="A's event at B"
        )
        assert (from_a.from_service, from_a.account, from_a.account_type) == (a, a, "service")

        # A process under another ring finds B's node but does not trust it: its event has
        # no one to go to, and its outbox keeps nothing for B.
        async def sees(server: Process, path: str, *, trusted: bool) -> bool:
            response = await http.post(f"{server.url}{path}", json={})
            assert response.status_code == 200, response.text
            return {"id": b_node, "trusted": trusted} in [
                {"id": node["id"], "trusted": node["trusted"]} for node in response.json()["nodes"]
            ]

        await eventually(
            lambda: sees(ringed, "/stranger/sees", trusted=False), timeout=15, message="B seen"
        )
        sent = await http.post(f"{ringed.url}/stranger/publish", json={"note": "from-ringed"})
        assert sent.status_code == 200, sent.text
        assert sent.json()["pending"] == 0

        # A process with auth off sends B an event without a token: B never handles it, but
        # dead-letters it at its first delivery, with the 401 that refused it.
        await eventually(
            lambda: sees(tokenless, "/stranger/sees", trusted=True), timeout=15, message="B seen"
        )
        sent = await http.post(f"{tokenless.url}/stranger/publish", json={"note": "from-tokenless"})
        assert sent.status_code == 200, sent.text

        # An event posted straight to B's inbox, with a forged token and A's name by hand:
        # refused, and dead-lettered at once (its token will not get better).
        forged_event = {
            "ce-id": uuid.uuid4().hex,
            "ce-source": a,
            "ce-type": topic,
            "ce-specversion": "1.0",
            "ce-time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "content-type": "application/json",
            "authorization": f"Bearer {forged}",
            "micro-from-service": a,
        }
        inbox = f"{service_b.url}/_micro/broker/{topic}?node={b_node}"
        taken = await http.post(inbox, content=b'{"note":"forged"}', headers=forged_event)
        assert taken.status_code == 200, taken.text

        for note, reason in (("from-tokenless", "no token"), ("forged", "key this deployment")):
            [dead] = await eventually(
                functools.partial(received, "dead", note),
                timeout=30,
                message=f"{note} dead-lettered",
            )
            assert (dead.from_service, dead.account, dead.deliveries) == (None, None, "1")
            assert dead.error is not None
            error = orjson.loads(dead.error)
            assert (error["code"], error["id"]) == (401, AUTH_ID), error
            assert reason in error["detail"], error
        everything = await events()
        assert [seen.note for seen in everything["received"]] == ["from-a"]
        assert sorted(seen.note for seen in everything["dead"]) == ["forged", "from-tokenless"]


async def test_a_never_calls_a_node_registered_under_b_by_a_process_without_the_ring(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    a, b, topic = unique("ida"), unique("idb"), f"notes.{uuid.uuid4().hex[:10]}"
    deployment = Deployment.made(tmp_path, IDENTITY_A=a, IDENTITY_B=b, IDENTITY_TOPIC=topic)
    other_ring = tmp_path / "other" / "keys.json"
    KeyRing(other_ring).load()
    async with deployment.auth() as auth:
        await auth.grant(Rule("a-calls-b", f"service:{a}", Resource("service", b, "*")))
        await auth.grant(Rule("a-faces-the-test", "", Resource("service", a, "*")))
        as_a = f"Bearer {auth.issue(service_account(a), expiry=600)}"
    service_a = process("a", deployment.env("a"))
    service_b = process("b", deployment.env("b"))
    impostor = process(
        "stranger",
        {
            **deployment.names,
            "IDENTITY_STRANGER": b,
            "MICRO_AUTH": "jwt://",
            "MICRO_AUTH_KEYS": str(other_ring),
            "MICRO_STORE": "memory://",
            "MICRO_BROKER": f"http://?dir={tmp_path / 'impostor'}",
        },
    )

    async with running(service_a, service_b, impostor):
        b_node = (await service_b.health())["node"]
        impostor_node = (await impostor.health())["node"]

        async def a_sees_both() -> bool:
            response = await http.post(f"{service_a.url}/a/sees", json={})
            assert response.status_code == 200, response.text
            return sorted((n["id"], n["trusted"]) for n in response.json()["nodes"]) == sorted(
                [(b_node, True), (impostor_node, False)]
            )

        await eventually(a_sees_both, timeout=15, message="A finds both nodes under B's name")

        for path, times in (("/a/call_b_http", 50), ("/a/call_b_grpc", 20)):
            response = await http.post(f"{service_a.url}{path}", json={"times": times})
            assert response.status_code == 200, response.text
            nodes = {reply["node"] for reply in response.json()["replies"]}
            assert nodes == {b_node}, path
        counted = await http.get(f"{impostor.url}/count")
        assert counted.json() == {"calls": 0, "with_token": 0}

        # What the proof prevents: a client that does not check registrations sends the
        # impostor its share of the calls, A's token with each.
        async with mdns() as registry:

            async def both_registered() -> bool:
                records = await registry.get_service(b)
                found = {node.id for record in records for node in record.nodes}
                return found == {b_node, impostor_node}

            await eventually(both_registered, timeout=15, message="both nodes under B's name")
            client = Client(registry=registry, identity=lambda: as_a, retries=0)
            try:
                replies = [
                    await client.call(b, "B.Whoami", Ask(), response_model=Seen) for _ in range(50)
                ]
            finally:
                await client.aclose()
        by_node = {reply.node for reply in replies}
        assert by_node == {b_node, impostor_node}
        calls = sum(reply.node == impostor_node for reply in replies)
        assert (await http.get(f"{impostor.url}/count")).json() == {
            "calls": calls,
            "with_token": calls,
        }


async def test_no_secret_private_key_or_token_leaks(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    vault = unique("vault")
    ring = tmp_path / "secrets" / "auth" / "keys.json"  # made by the service itself
    deployment = Deployment(tmp_path, ring, f"sqlite:///{tmp_path / 'store.db'}", {})
    log_file = tmp_path / "vault.log"
    server = process(
        "vault",
        deployment.env("vault", IDENTITY_VAULT=vault),
        "--log-level",
        "debug",
        log=log_file,
    )
    exposed: list[bytes] = []  # every body the test got back that is not a login's tokens
    async with deployment.auth() as auth:
        for rule in (
            Rule("log-in", "", Resource("service", vault, "Vault.Login")),
            Rule("refresh", "", Resource("service", vault, "Vault.Refresh")),
            Rule("users", "user", Resource("service", vault, "Vault.Me")),
            Rule("stats", "user", Resource("service", vault, "GET /_micro/stats")),
            Rule("itself", f"service:{vault}", Resource("service", vault, "*")),
        ):
            await auth.grant(rule)
        async with running(server):
            account = await auth.generate("ada", scopes=["user"])
            assert account.secret is not None
            secret = account.secret

            async def call(
                path: str, body: Any, headers: Mapping[str, str] | None = None
            ) -> httpx.Response:
                return await http.post(f"{server.url}{path}", json=body, headers=headers)

            wrong = await call("/vault/login", {"id": "ada", "secret": secret[::-1]})
            assert_unauthenticated(wrong)
            exposed.append(wrong.content)
            login = await call("/vault/login", {"id": "ada", "secret": secret})
            assert login.status_code == 200, login.text
            first = login.json()
            me = await call("/vault/me", {"note": "hi"}, bearer(first["access_token"]))
            assert me.status_code == 200, me.text
            mine, itself = me.json()["replies"]
            assert (mine["account"], mine["account_type"]) == ("ada", "user")
            assert itself["from_service"] == vault
            exposed.append(me.content)
            renewed = await call("/vault/refresh", {"refresh_token": first["refresh_token"]})
            assert renewed.status_code == 200, renewed.text
            second = renewed.json()
            again = await call("/vault/refresh", {"refresh_token": first["refresh_token"]})
            assert_unauthenticated(again)  # a refresh token is good once
            exposed.append(again.content)
            tampered = first["access_token"][:-4] + "AAAA"
            for token in (tampered, second["refresh_token"]):
                refused = await call("/vault/me", {}, bearer(token))
                assert_unauthenticated(refused)
                exposed.append(refused.content)
            record = await http.get(f"{server.url}/_micro/registry")
            async with grpc.aio.insecure_channel(
                record_of(record).nodes[0].metadata["grpc"]
            ) as channel:
                over_grpc = channel.unary_unary(grpc_path(record_of(record), "Vault.Me"))
                await over_grpc(
                    ASK.encode(Ask()),
                    metadata=(("authorization", f"Bearer {second['access_token']}"),),
                    timeout=5,
                )
                with pytest.raises(grpc.aio.AioRpcError) as refused_grpc:
                    await over_grpc(
                        ASK.encode(Ask()),
                        metadata=(("authorization", f"Bearer {tampered}"),),
                        timeout=5,
                    )
                assert refused_grpc.value.code() == grpc.StatusCode.UNAUTHENTICATED
                exposed.append((refused_grpc.value.details() or "").encode())

            # The node's proof is in its record for all to read: it is no access token.
            [proof] = [node.metadata["auth"] for node in record_of(record).nodes]
            assert jwt_type(proof.encode()) == "node+jwt"
            assert_unauthenticated(await call("/vault/me", {}, bearer(proof)))
            async with mdns() as registry:
                [registered] = await registry.get_service(vault)
            assert [node.metadata["auth"] for node in registered.nodes] == [proof]

            stats = await http.get(
                f"{server.url}/_micro/stats", headers=bearer(second["access_token"])
            )
            assert stats.status_code == 200, stats.text
            for token in (proof, None):
                refused_stats = await http.get(
                    f"{server.url}/_micro/stats", headers=bearer(token) if token else {}
                )
                assert_unauthenticated(refused_stats)
            health = await http.get(f"{server.url}/_micro/health")
            jwks = await http.get(f"{server.url}/.well-known/jwks.json")
            exposed += [stats.content, health.content, record.content, jwks.content]
            exposed.append(orjson.dumps(registered.to_dict()))
    log = log_file.read_bytes()  # the service stopped: its whole log, shutdown included

    ring_keys = orjson.loads(ring.read_bytes())["keys"]
    private = [key["d"].encode() for key in ring_keys]
    assert len(private) == len(ring_keys) >= 1
    assert {key["kid"] for key in jwks.json()["keys"]} == {key["kid"] for key in ring_keys}
    assert not any("d" in key for key in jwks.json()["keys"])
    tokens = [
        first["access_token"],
        first["refresh_token"],
        second["access_token"],
        second["refresh_token"],
    ]
    signatures = [token.rpartition(".")[2] for token in tokens]
    secrets = [secret.encode(), *private, *(t.encode() for t in tokens + signatures)]
    assert b"DEBUG" in log  # the log has it all, debug included
    assert b"/vault/me" in log
    for where, text in [("log", log), *(("a response", body) for body in exposed)]:
        leaked = [n for n, value in enumerate(secrets) if value in text]
        assert not leaked, f"secret(s) #{leaked} in {where}"
        # No token of any kind but a node's (public) proof.
        assert {jwt_type(found) for found in _JWT.findall(text)} <= {"node+jwt"}, where

    assert stat.S_IMODE(ring.stat().st_mode) == 0o600
    assert stat.S_IMODE(ring.parent.stat().st_mode) == 0o700


async def test_an_expired_token_does_not_name_its_service_on_a_back_dated_event(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    a, b, topic = unique("ida"), unique("idb"), f"notes.{uuid.uuid4().hex[:10]}"
    deployment = Deployment.made(tmp_path, IDENTITY_A=a, IDENTITY_B=b, IDENTITY_TOPIC=topic)
    async with deployment.auth() as auth:
        for rule in (
            Rule("a-tells-b", f"service:{a}", Resource("topic", b, topic)),
            Rule("b-dead-letters", "", Resource("topic", b, f"{topic}.dead")),
            OPERATOR_RULE,
        ):
            await auth.grant(rule)
        operator = bearer(auth.issue(OPERATOR, expiry=600))
    # One of A's own tokens, as A's guard mints them, from an hour ago: long expired.
    ring = KeyRing(deployment.ring)
    ring.load()
    key = ring.signing
    issued = int(time.time()) - 3600
    claims = {
        "iss": "micro",
        "aud": "micro",
        "sub": a,
        "iat": issued,
        "nbf": issued,
        "exp": issued + 900,
        "jti": uuid.uuid4().hex,
        "type": "service",
        "scopes": ["service", f"service:{a}"],
    }
    header = {"alg": key.algorithm, "kid": key.kid, "typ": "at+jwt"}
    expired = joserfc_jwt.encode(header, claims, key.key, algorithms=[key.algorithm])
    service_b = process("b", deployment.env("b"))

    async with running(service_b):
        b_node = (await service_b.health())["node"]
        refused = await http.post(f"{service_b.url}/b/whoami", json={}, headers=bearer(expired))
        assert_unauthenticated(refused)  # as a call's token, it is expired
        back_dated = datetime.fromtimestamp(issued + 60, UTC).isoformat(timespec="milliseconds")
        event = {
            "ce-id": uuid.uuid4().hex,
            "ce-source": a,
            "ce-type": topic,
            "ce-specversion": "1.0",
            "ce-time": back_dated,
            "content-type": "application/json",
            "authorization": f"Bearer {expired}",
        }
        inbox = f"{service_b.url}/_micro/broker/{topic}?node={b_node}"
        taken = await http.post(inbox, content=b'{"note":"replayed"}', headers=event)
        assert taken.status_code == 200, taken.text

        async def settled() -> dict[str, list[str]]:
            response = await http.get(f"{service_b.url}/received", headers=operator)
            found = {
                kind: [seen["note"] for seen in events] for kind, events in response.json().items()
            }
            return found if "replayed" in found["received"] + found["dead"] else {}

        outcome = await eventually(settled, timeout=15, message="the event settled at B")
        assert outcome == {"received": [], "dead": ["replayed"]}
