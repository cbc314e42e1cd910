"""The guard against forged, stale, misused and smuggled tokens, on HTTP and gRPC alike.

A real service with auth on, its rule granting the scope ``user`` ``Greeter.*``, and ``ada``,
who holds it: her token gets through, and every attack below is a 401 (``UNAUTHENTICATED``)
with the auth's error id, and never reaches the handler. Then the identity a caller claims
(``Micro-From-Service``), and URL spellings that must not slip past a deny rule.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import h11
import httpx
import orjson
import pytest
from fastapi import FastAPI
from joserfc import jwt
from joserfc.jwk import OKPKey, RSAKey
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from asgi_micro import MicroRouter, Service
from asgi_micro.auth import Access, KeyRing, Resource, Rule
from asgi_micro.auth.jwt import MAX_TOKEN_SIZE, JWTAuth
from asgi_micro.client import Transport
from asgi_micro.client.grpc import method_path
from asgi_micro.codec import PROTOBUF, message_type
from asgi_micro.errors import AUTH_ID, Unauthorized
from asgi_micro.fastapi import Context
from asgi_micro.grpc import error_from_status
from asgi_micro.registry.memory import MemoryRegistry
from tests.helpers import serve

TRANSPORTS: tuple[Transport, ...] = ("http", "grpc")
REFUSED: Mapping[Transport, tuple[int | str, str]] = {
    "http": (401, AUTH_ID),
    "grpc": ("UNAUTHENTICATED", AUTH_ID),
}
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
ACCEPTED: Mapping[Transport, tuple[int | str, str]] = {"http": (200, ""), "grpc": ("OK", "")}

transports = pytest.mark.parametrize("transport", TRANSPORTS)


class Hello(BaseModel):
    name: str


class Greeting(BaseModel):
    message: str


class Nothing(BaseModel):
    pass


class Caller(BaseModel):
    from_service: str | None = None
    greeting: str | None = None


# -- the service under attack -----------------------------------------------------------------


def greeter_app(service: Service, calls: list[str]) -> FastAPI:
    greeter = MicroRouter("Greeter")

    @greeter.rpc()
    async def hello(req: Hello) -> Greeting:
        calls.append(req.name)
        return Greeting(message=f"Hello {req.name}")

    whoami = MicroRouter("Whoami")

    @whoami.rpc()
    async def caller(req: Nothing, ctx: Context) -> Caller:
        metadata = ctx.metadata
        return Caller(from_service=metadata.get("from-service"), greeting=metadata.get("greeting"))

    app = FastAPI(lifespan=service.lifespan)
    app.include_router(greeter)
    app.include_router(whoami)
    return app


@dataclass
class Greeter:
    """The service, where it listens, what its handler saw, and ada's good token."""

    service: Service
    http: str
    calls: list[str]
    token: str = field(repr=False)
    refresh_token: str = field(repr=False)

    @property
    def auth(self) -> JWTAuth:
        assert isinstance(self.service.auth, JWTAuth)
        return self.service.auth

    @property
    def grpc(self) -> str:
        node = self.service.node
        assert node is not None
        return node.metadata["grpc"]

    async def hello(self, transport: Transport, authorization: str | None) -> tuple[int | str, str]:
        """Call ``Greeter.Hello`` as any client would: the status and the error id
        (``""`` on success)."""
        headers = {"authorization": authorization} if authorization is not None else {}
        if transport == "http":
            async with httpx.AsyncClient(base_url=f"http://{self.http}", timeout=10) as http:
                response = await http.post("/greeter/hello", json={"name": "Ada"}, headers=headers)
            if response.status_code == 200:
                assert response.json() == {"message": "Hello Ada"}
                return 200, ""
            return response.status_code, str(response.json().get("id"))
        try:
            reply = await self.grpc_call("Greeter.Hello", Hello(name="Ada"), headers)
        except grpc.aio.AioRpcError as exc:
            error = error_from_status(exc.code(), exc.details(), exc.trailing_metadata())
            return exc.code().name, error.id
        assert PROTOBUF.decode(reply, message_type(Greeting)) == Greeting(message="Hello Ada")
        return "OK", ""

    async def grpc_call(self, endpoint: str, request: BaseModel, headers: Mapping[str, str]) -> Any:
        payload = PROTOBUF.encode(request, message_type(type(request)))
        async with grpc.aio.insecure_channel(self.grpc) as channel:
            call = channel.unary_unary(method_path(self.service.name, endpoint))
            return await call(payload, metadata=tuple(headers.items()), timeout=10)

    async def refused(self, transport: Transport, authorization: str | None) -> None:
        """Assert that the call is refused as unauthenticated, before the handler."""
        before = len(self.calls)
        outcome = await self.hello(transport, authorization)  # pytest would show the token
        assert outcome == REFUSED[transport]
        assert len(self.calls) == before, "the handler ran for a refused call"

    async def accepted(self, transport: Transport, authorization: str | None) -> None:
        before = len(self.calls)
        outcome = await self.hello(transport, authorization)
        assert outcome == ACCEPTED[transport]
        assert len(self.calls) == before + 1


@contextlib.asynccontextmanager
async def deployment(
    keys: Path, *, alg: str = "EdDSA", registry: MemoryRegistry | None = None
) -> AsyncIterator[Greeter]:
    service = Service(
        f"greeter-{uuid.uuid4().hex[:8]}",
        registry=registry or MemoryRegistry(),
        store="memory://",
        broker="memory://",
        auth=f"jwt://?alg={alg}&keys={keys}",
    )
    calls: list[str] = []
    async with serve(greeter_app(service, calls)) as address:
        await service.wait_registered()
        auth = service.auth
        account = await auth.generate("ada", scopes=["user"])
        await auth.grant(Rule("users", "user", Resource("service", service.name, "Greeter.*")))
        await auth.grant(Rule("whoami", "", Resource("service", service.name, "Whoami.*")))
        await service.guard.load_rules()
        assert account.secret is not None
        tokens = await auth.token(id="ada", secret=account.secret)
        yield Greeter(service, address, calls, tokens.access_token, tokens.refresh_token)


@pytest.fixture
async def greeter(tmp_path: Path) -> AsyncIterator[Greeter]:
    async with deployment(tmp_path / "keys.json") as greeter:
        yield greeter


@pytest.fixture
async def rsa_greeter(tmp_path: Path) -> AsyncIterator[Greeter]:
    async with deployment(tmp_path / "keys.json", alg="RS256") as greeter:
        yield greeter


# -- forging tokens ---------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def claims(greeter: Greeter, **changes: Any) -> dict[str, Any]:
    """The claims of a good access token of ada's, with ``changes`` (``None``: left out)."""
    now = int(time.time())
    good = {
        "iss": greeter.auth.issuer,
        "aud": greeter.auth.audience,
        "sub": "ada",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
        "type": "user",
        "scopes": ["user"],
    }
    good.update(changes)
    return {name: value for name, value in good.items() if value is not None}


def signed(
    payload: Mapping[str, Any],
    key: OKPKey | RSAKey,
    algorithm: str,
    **header: Any,
) -> str:
    """A JWT signed with ``key``; the header says ``at+jwt`` and the key's kid unless told
    (``None``: left out)."""
    full = {"alg": algorithm, "kid": key.kid, "typ": "at+jwt", **header}
    present = {name: value for name, value in full.items() if value is not None}
    return jwt.encode(present, dict(payload), key, algorithms=[algorithm])


def by_the_ring(greeter: Greeter, payload: Mapping[str, Any]) -> str:
    """Signed with the service's own signing key: only what ``payload`` says can be wrong."""
    key = greeter.auth.keys.signing
    return signed(payload, key.key, key.algorithm)


def attacker_key(kid: str | None = None) -> OKPKey:
    return OKPKey.generate_key("Ed25519", parameters={"kid": kid or uuid.uuid4().hex})


def bearer(token: str) -> str:
    return f"Bearer {token}"


# -- good tokens, and forged ones -------------------------------------------------------------


@transports
async def test_a_good_token_gets_through(greeter: Greeter, transport: Transport) -> None:
    await greeter.accepted(transport, bearer(greeter.token))
    await greeter.refused(transport, None)


@transports
async def test_an_unsigned_token_is_refused(greeter: Greeter, transport: Transport) -> None:
    kid = greeter.auth.keys.signing.kid
    head = b64(orjson.dumps({"alg": "none", "kid": kid, "typ": "at+jwt"}))
    body = b64(orjson.dumps(claims(greeter)))
    good_signature = greeter.token.rsplit(".", 1)[1]
    await greeter.refused(transport, bearer(f"{head}.{body}."))
    await greeter.refused(transport, bearer(f"{head}.{body}.{good_signature}"))
    head = b64(orjson.dumps({"alg": "None", "typ": "at+jwt"}))
    await greeter.refused(transport, bearer(f"{head}.{body}."))


@transports
async def test_hmac_with_the_rsa_public_key_is_refused(
    rsa_greeter: Greeter, transport: Transport
) -> None:
    ring_key = rsa_greeter.auth.keys.signing
    assert ring_key.algorithm == "RS256"
    public = RSAKey.import_key(ring_key.public())
    await rsa_greeter.accepted(transport, bearer(rsa_greeter.token))
    # What an attacker has of the key: its PEM, and the JWK that JWKS serves.
    for secret in (public.as_pem(private=False), orjson.dumps(ring_key.public())):
        head = b64(orjson.dumps({"alg": "HS256", "kid": ring_key.kid, "typ": "at+jwt"}))
        body = b64(orjson.dumps(claims(rsa_greeter)))
        mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
        await rsa_greeter.refused(transport, bearer(f"{head}.{body}.{b64(mac)}"))


@dataclass
class Attacker:
    """A JWKS server of the attacker's, counting who fetches it."""

    key: OKPKey
    url: str
    fetched: list[str] = field(default_factory=list)


@pytest.fixture
async def attacker(greeter: Greeter) -> AsyncIterator[Attacker]:
    key = attacker_key(greeter.auth.keys.signing.kid)
    fetched: list[str] = []

    async def jwks(request: Request) -> JSONResponse:
        fetched.append(request.url.path)
        return JSONResponse({"keys": [key.as_dict(private=False)]})

    app = Starlette(routes=[Route("/jwks.json", jwks)])
    async with serve(app) as address:
        yield Attacker(key, f"http://{address}/jwks.json", fetched)


@transports
async def test_a_key_of_the_tokens_own_choosing_is_refused(
    greeter: Greeter, attacker: Attacker, transport: Transport
) -> None:
    payload = claims(greeter)
    public = attacker.key.as_dict(private=False)
    for kid in (attacker.key.kid, uuid.uuid4().hex):  # the ring's own kid, and a new one
        await greeter.refused(
            transport, bearer(signed(payload, attacker.key, "Ed25519", kid=kid, jwk=public))
        )
        await greeter.refused(
            transport, bearer(signed(payload, attacker.key, "Ed25519", kid=kid, jku=attacker.url))
        )
    assert attacker.fetched == [], "the service fetched a key the token pointed at"


@transports
@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"exp": -60, "iat": -400, "nbf": -400}, id="expired a minute ago"),
        pytest.param({"nbf": 60}, id="valid in a minute"),
        pytest.param({"iat": 60}, id="issued in a minute"),
    ],
)
async def test_a_token_outside_its_lifetime_and_the_leeway_is_refused(
    greeter: Greeter, transport: Transport, change: dict[str, int]
) -> None:
    assert greeter.auth.leeway == 10
    now = int(time.time())
    payload = claims(greeter, **{name: now + offset for name, offset in change.items()})
    await greeter.refused(transport, bearer(by_the_ring(greeter, payload)))


@transports
async def test_a_token_expired_inside_the_leeway_still_passes(
    greeter: Greeter, transport: Transport
) -> None:
    now = int(time.time())
    payload = claims(greeter, exp=now - 5, iat=now - 300, nbf=now - 300)
    await greeter.accepted(transport, bearer(by_the_ring(greeter, payload)))
    await greeter.accepted(transport, bearer(by_the_ring(greeter, claims(greeter, nbf=now + 5))))


@transports
@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"iss": "evil"}, id="another issuer"),
        pytest.param({"aud": "evil"}, id="another audience"),
        pytest.param({"aud": ["evil", "other"]}, id="audiences without ours"),
        pytest.param({"exp": None}, id="no expiry"),
        pytest.param({"exp": str(2**40)}, id="an expiry that is no number"),
        pytest.param({"sub": None}, id="no subject"),
        pytest.param({"iss": None}, id="no issuer"),
        pytest.param({"aud": None}, id="no audience"),
    ],
)
async def test_a_token_with_a_wrong_or_missing_claim_is_refused(
    greeter: Greeter, transport: Transport, change: dict[str, Any]
) -> None:
    await greeter.refused(transport, bearer(by_the_ring(greeter, claims(greeter, **change))))


@transports
async def test_a_token_by_a_key_the_ring_lacks_is_refused(
    greeter: Greeter, transport: Transport
) -> None:
    key = attacker_key()
    await greeter.refused(transport, bearer(signed(claims(greeter), key, "Ed25519")))
    # Claiming to be the service itself makes it look for the key among its own: in vain.
    payload = claims(greeter, sub=greeter.service.name, type="service", scopes=["service"])
    await greeter.refused(transport, bearer(signed(payload, key, "Ed25519")))


@transports
@pytest.mark.parametrize("change", [{"scopes": ["admin"]}, {"sub": "root"}, {"exp": 2**40}])
async def test_a_tampered_payload_fails_its_signature(
    greeter: Greeter, transport: Transport, change: dict[str, Any]
) -> None:
    head, body, signature = greeter.token.split(".")
    payload = {**orjson.loads(unb64(body)), **change}
    tampered = f"{head}.{b64(orjson.dumps(payload))}.{signature}"
    await greeter.refused(transport, bearer(tampered))
    await greeter.accepted(transport, bearer(greeter.token))


@transports
async def test_a_token_of_another_deployment_is_refused(
    greeter: Greeter, transport: Transport, tmp_path: Path
) -> None:
    other = KeyRing(tmp_path / "other" / "keys.json")
    other.load()
    key = other.signing
    payload = claims(greeter)
    await greeter.refused(transport, bearer(signed(payload, key.key, key.algorithm)))
    # Naming this deployment's kid does not lend the other key its trust.
    kid = greeter.auth.keys.signing.kid
    await greeter.refused(transport, bearer(signed(payload, key.key, key.algorithm, kid=kid)))


@transports
async def test_a_refresh_token_or_a_node_proof_is_no_access_token(
    greeter: Greeter, transport: Transport
) -> None:
    await greeter.refused(transport, bearer(greeter.refresh_token))
    proof = greeter.service.guard.proof(greeter.service.node)["auth"]
    await greeter.refused(transport, bearer(proof))
    # Nor an access token whose type says otherwise.
    payload = claims(greeter)
    key = greeter.auth.keys.signing
    for typ in ("rt+jwt", "node+jwt", "JWT", None):
        token = signed(payload, key.key, key.algorithm, typ=typ)
        await greeter.refused(transport, bearer(token))


async def test_a_revoked_or_used_refresh_token_gets_no_more_tokens(greeter: Greeter) -> None:
    auth = greeter.auth
    account = await auth.generate("grace", scopes=["user"])
    assert account.secret is not None
    first = await auth.token(id="grace", secret=account.secret)
    await auth.revoke(first.refresh_token)
    with pytest.raises(Unauthorized) as revoked:
        await auth.token(refresh_token=first.refresh_token)
    assert revoked.value.id == AUTH_ID

    second = await auth.token(id="grace", secret=account.secret)
    third = await auth.token(refresh_token=second.refresh_token)
    assert (await auth.inspect(third.access_token)).id == "grace"
    with pytest.raises(Unauthorized) as reused:
        await auth.token(refresh_token=second.refresh_token)
    assert reused.value.id == AUTH_ID
    for tokens in (first, second, third):
        assert tokens.refresh_token not in str(revoked.value.detail) + str(reused.value.detail)


@transports
@pytest.mark.parametrize(
    "form",
    [
        "Token {token}",
        "Bearer",
        "Bearer  {token}",
        "Bearer {token} extra",
        "Bearer{token}",
        "Basic dXNlcjpwYXNz",
        "{token}",
    ],
)
async def test_an_authorization_header_not_of_the_bearer_form_is_refused(
    greeter: Greeter, transport: Transport, form: str
) -> None:
    await greeter.refused(transport, form.format(token=greeter.token))


@transports
@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "bEaReR"])
async def test_the_bearer_scheme_is_case_insensitive(
    greeter: Greeter, transport: Transport, scheme: str
) -> None:
    await greeter.accepted(transport, f"{scheme} {greeter.token}")


def of_length(greeter: Greeter, length: int) -> str:
    """A good token of ``length`` characters, or up to 3 fewer (base64 goes by 4): padded
    claims, signed by the ring, so that only its size can be wrong."""
    pad = (length - len(by_the_ring(greeter, claims(greeter)))) * 3 // 4
    token = by_the_ring(greeter, claims(greeter, padding="x" * pad))
    while len(token) > length:
        pad -= 1
        token = by_the_ring(greeter, claims(greeter, padding="x" * pad))
    return token


@transports
async def test_a_token_at_the_size_limit_is_read(greeter: Greeter, transport: Transport) -> None:
    # gRPC's default limit on metadata is 8 KiB too, and a soft one: above it a growing share
    # of calls is refused at random (RESOURCE_EXHAUSTED). The service's server takes 16 KiB, so
    # many calls show that the limit is auth's.
    token = of_length(greeter, MAX_TOKEN_SIZE)
    assert MAX_TOKEN_SIZE - 4 < len(token) <= MAX_TOKEN_SIZE
    outcomes = [await greeter.hello(transport, bearer(token)) for _ in range(50)]
    assert set(outcomes) == {ACCEPTED[transport]}


@transports
async def test_an_oversized_token_is_refused_unread(greeter: Greeter, transport: Transport) -> None:
    token = of_length(greeter, MAX_TOKEN_SIZE + 256)
    assert len(token) > MAX_TOKEN_SIZE
    outcomes = {await greeter.hello(transport, bearer(token)) for _ in range(20)}
    assert outcomes == {REFUSED[transport]}
    assert greeter.calls == []


# -- who calls --------------------------------------------------------------------------------


@transports
async def test_a_caller_cannot_claim_to_be_a_service(tmp_path: Path, transport: Transport) -> None:
    keys = tmp_path / "keys.json"
    registry = MemoryRegistry()
    async with (
        deployment(keys, registry=registry) as greeter,
        Service(
            f"caller-{uuid.uuid4().hex[:8]}",
            registry=registry,
            store="memory://",
            broker="memory://",
            auth=f"jwt://?keys={keys}",
            grpc=False,
        ) as caller,
    ):
        # The header reaches the service as other metadata does (the greeting shows it)...
        spoofed = {"micro-from-service": caller.name, "micro-greeting": "hi"}
        for authorization in (None, bearer(greeter.token)):
            seen = await who_calls(greeter, transport, authorization, spoofed)
            assert seen == Caller(from_service=None, greeting="hi")
        # ...but only a real service's call, with its token, is from a service.
        reply = await caller.client.call(
            greeter.service.name,
            "Whoami.Caller",
            Nothing(),
            response_model=Caller,
            transport=transport,
        )
        assert reply == Caller(from_service=caller.name)


async def who_calls(
    greeter: Greeter, transport: Transport, authorization: str | None, metadata: Mapping[str, str]
) -> Caller:
    headers = dict(metadata)
    if authorization is not None:
        headers["authorization"] = authorization
    if transport == "http":
        async with httpx.AsyncClient(base_url=f"http://{greeter.http}", timeout=10) as http:
            response = await http.post("/whoami/caller", json={}, headers=headers)
        assert response.status_code == 200, response.text
        return Caller.model_validate(response.json())
    reply = await greeter.grpc_call("Whoami.Caller", Nothing(), headers)
    decoded: Caller = PROTOBUF.decode(reply, message_type(Caller))
    return decoded


# -- URL spellings against a deny rule (HTTP) -------------------------------------------------


REDIRECTS = frozenset({301, 302, 303, 307, 308})
REFUSALS = frozenset({400, 403, 404, 405})


@dataclass
class Vault:
    service: Service
    http: str
    token: str = field(repr=False)
    opened: list[str] = field(default_factory=list)


@pytest.fixture
async def vault(tmp_path: Path) -> AsyncIterator[Vault]:
    """A service granting ``user`` everything but ``GET /admin/secret``, ``Vault.Open`` and
    ``GET /_micro/asyncapi.json``."""
    service = Service(
        f"vault-{uuid.uuid4().hex[:8]}",
        registry=MemoryRegistry(),
        store="memory://",
        broker="memory://",
        auth=f"jwt://?keys={tmp_path / 'keys.json'}",
    )
    opened: list[str] = []
    router = MicroRouter("Vault")

    @router.rpc()
    async def open(req: Nothing) -> Greeting:
        opened.append("Vault.Open")
        return Greeting(message="the crown jewels")

    @router.rpc()
    async def peek(req: Nothing) -> Greeting:
        return Greeting(message="a glimpse")

    app = FastAPI(lifespan=service.lifespan)
    app.include_router(router)

    @app.get("/admin/secret")
    async def secret() -> Greeting:
        opened.append("GET /admin/secret")
        return Greeting(message="the crown jewels")

    @app.get("/status")
    async def status() -> Greeting:
        return Greeting(message="fine")

    async with serve(app) as address:
        await service.wait_registered()
        auth = service.auth
        account = await auth.generate("ada", scopes=["user"])
        name = service.name
        await auth.grant(Rule("users", "user", Resource("service", name, "*")))
        for endpoint in ("GET /admin/secret", "Vault.Open", "GET /_micro/asyncapi.json"):
            await auth.grant(
                Rule(f"no {endpoint}", "*", Resource("service", name, endpoint), Access.DENY, 10)
            )
        await service.guard.load_rules()
        assert account.secret is not None
        tokens = await auth.token(id="ada", secret=account.secret)
        yield Vault(service, address, tokens.access_token, opened)


async def raw_request(
    address: str, method: str, target: str, headers: Mapping[str, str], body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request with ``target`` sent byte for byte as written (httpx would
    normalise it)."""
    host, port = address.rsplit(":", 1)
    assert host == "127.0.0.1"
    reader, writer = await asyncio.open_connection(host, int(port))
    connection = h11.Connection(h11.CLIENT)
    fields = [("host", address), ("connection", "close"), *headers.items()]
    if method == "POST":
        fields += [("content-type", "application/json"), ("content-length", str(len(body)))]
    try:
        writer.write(connection.send(h11.Request(method=method, target=target, headers=fields)))
        if body:
            writer.write(connection.send(h11.Data(data=body)))
        writer.write(connection.send(h11.EndOfMessage()))
        await writer.drain()
        status, response_headers, content = 0, {}, b""
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(await asyncio.wait_for(reader.read(65536), 10))
            elif isinstance(event, h11.Response):
                status = event.status_code
                response_headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                content += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, response_headers, content
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def outcome(
    vault: Vault, method: str, target: str, authorization: str | None
) -> list[tuple[str, int]]:
    """Each target the request reaches and its status, redirects followed (on this host)."""
    headers = {"authorization": authorization} if authorization is not None else {}
    body = b"{}" if method == "POST" else b""
    seen: list[tuple[str, int]] = []
    for _ in range(5):
        status, response_headers, _content = await raw_request(
            vault.http, method, target, headers, body
        )
        seen.append((target, status))
        if status not in REDIRECTS:
            return seen
        location = urlsplit(response_headers["location"])
        assert location.netloc in ("", vault.http), f"redirected off the host: {location}"
        target = location.path + (f"?{location.query}" if location.query else "")
    raise AssertionError(f"redirects without end: {seen}")


async def test_the_vaults_rules_grant_and_deny(vault: Vault) -> None:
    good = bearer(vault.token)
    assert await outcome(vault, "GET", "/status", good) == [("/status", 200)]
    assert await outcome(vault, "POST", "/vault/peek", good) == [("/vault/peek", 200)]
    assert await outcome(vault, "GET", "/admin/secret", good) == [("/admin/secret", 403)]
    assert await outcome(vault, "POST", "/vault/open", good) == [("/vault/open", 403)]
    asyncapi = "/_micro/asyncapi.json"
    assert await outcome(vault, "GET", asyncapi, good) == [(asyncapi, 403)]
    assert await outcome(vault, "GET", "/admin/secret", None) == [("/admin/secret", 401)]
    assert vault.opened == []


SPELLINGS = (
    ("GET", "/admin/secret/"),
    ("GET", "/Admin/Secret"),
    ("GET", "/ADMIN/SECRET"),
    ("GET", "/admin%2Fsecret"),
    ("GET", "/admin%2fsecret"),
    ("GET", "/%61dmin/secret"),
    ("GET", "/x/../admin/secret"),
    ("GET", "/x/%2E%2E/admin/secret"),
    ("GET", "/admin/./secret"),
    ("GET", "//admin//secret"),
    ("GET", "//admin/secret"),
    ("GET", "/admin//secret"),
    ("GET", "/admin/secret?x=1"),
    ("GET", "/admin/secret;x=1"),
    ("GET", "/admin/secret%00"),
    ("GET", "/admin/secret#fragment"),
    ("POST", "/vault/open/"),
    ("POST", "/Vault/Open"),
    ("POST", "/vault%2Fopen"),
    ("POST", "/%76ault/open"),
    ("POST", "/x/../vault/open"),
    ("POST", "//vault//open"),
    ("GET", "/_micro/asyncapi.json/"),
    ("GET", "/_micro/%61syncapi.json"),
    ("GET", "/_micro//asyncapi.json"),
    ("GET", "/x/../_micro/asyncapi.json"),
    ("GET", "/_MICRO/asyncapi.json"),
)
"""Other spellings of the three denied endpoints (a route, an RPC, an internal route), each
sent byte for byte."""


async def test_another_spelling_of_a_denied_path_does_not_reach_it(vault: Vault) -> None:
    good = bearer(vault.token)
    slipped = {}
    for method, target in SPELLINGS:
        seen = await outcome(vault, method, target, good)
        redirects, (_, last) = seen[:-1], seen[-1]
        if any(status not in REDIRECTS for _, status in redirects) or last not in REFUSALS:
            slipped[f"{method} {target}"] = seen
    assert slipped == {}
    assert vault.opened == []


async def test_internal_routes_open_only_what_is_public(vault: Vault) -> None:
    async with httpx.AsyncClient(base_url=f"http://{vault.http}", timeout=10) as http:
        stats = await http.get("/_micro/stats")
        assert stats.status_code == 401
        assert stats.json()["id"] == AUTH_ID
        signed_in = await http.get("/_micro/stats", headers={"authorization": bearer(vault.token)})
        assert signed_in.status_code == 200
        assert (await http.get("/_micro/health")).status_code == 200
        jwks = await http.get("/.well-known/jwks.json")
    assert jwks.status_code == 200
    keys = jwks.json()["keys"]
    assert keys
    for key in keys:
        assert not PRIVATE_MEMBERS & key.keys(), key.keys()
        assert not any(name.startswith("micro_") for name in key)


@pytest.mark.parametrize("alg", ["EdDSA", "RS256"])
async def test_jwks_serves_public_keys_only(tmp_path: Path, alg: str) -> None:
    async with (
        deployment(tmp_path / "keys.json", alg=alg) as greeter,
        httpx.AsyncClient(base_url=f"http://{greeter.http}", timeout=10) as http,
    ):
        response = await http.get("/.well-known/jwks.json")
    assert response.status_code == 200
    [key] = response.json()["keys"]
    assert key["kid"] == greeter.auth.keys.signing.kid
    assert not PRIVATE_MEMBERS & key.keys()
    assert not any(name.startswith("micro_") for name in key)
