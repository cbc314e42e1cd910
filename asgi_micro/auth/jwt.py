"""``jwt://``: accounts and rules in the service's store, tokens signed with the key ring.

    jwt://                          the ring in .micro/auth/keys.json (made on first use), EdDSA
    jwt://?alg=RS256&ttl=600        RS256 keys, access tokens good for 10 minutes
    jwt://?keys=/run/secrets/ring   the ring from a file (or MICRO_AUTH_KEYS)

Options: ``alg`` (``EdDSA``, the default, or ``RS256``), ``keys``, ``issuer`` and ``audience``
(both ``micro`` unless told: the deployment's name, which every token carries and every check
demands), ``ttl`` (access tokens, 900 s), ``refresh_ttl`` (30 days), ``leeway`` (the clock skew
forgiven on ``exp``, ``nbf`` and ``iat``, 10 s).

What a token must be to pass: signed by a key of the ring that still verifies, named by its
``kid``, with that key's algorithm (the header's ``alg`` is checked against the key, never used
to choose one; ``none``, HMAC and embedded ``jwk``/``jku``/``x5u`` keys are refused), of the
expected use (an access token for a call, never a refresh token or a node's statement), from
this issuer to this audience, inside its lifetime, and at most ``MAX_TOKEN_SIZE`` bytes.
Verified access tokens are cached until they expire, so a call pays for a dictionary look-up.
Accounts (their secrets hashed with Argon2 through pwdlib), rules and revoked refresh tokens
live in the store's ``auth`` table, on SQLite or PostgreSQL alike.
"""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Final, Self
from urllib.parse import parse_qs, urlsplit

import orjson
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwt import JWTClaimsRegistry
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from ..errors import AUTH_ID, BadRequest, Conflict, NotFound, Unauthorized
from ..plugins import Parts
from ..store import ABSENT, Store
from .base import (
    ACCOUNT_TYPES,
    Account,
    AccountType,
    Auth,
    Tokens,
    check_account_id,
    claims_account,
)
from .keys import DEFAULT_PATH, KeyRing
from .rules import Rule

__all__ = ["MAX_TOKEN_SIZE", "JWTAuth", "UnknownKey"]

MAX_TOKEN_SIZE: Final = 8 * 1024
"""The longest token looked at; longer ones are refused unread."""
_OPTIONS: Final = frozenset({"alg", "keys", "issuer", "audience", "ttl", "refresh_ttl", "leeway"})
_TYPES: Final = {
    "access": "at+jwt",
    "refresh": "rt+jwt",
    "node": "node+jwt",
    "event": "event+jwt",
}
_ARTICLES: Final = {"access": "an", "refresh": "a", "node": "a", "event": "an"}
_FORBIDDEN_HEADERS: Final = frozenset({"jwk", "jku", "x5u", "x5c", "crit"})
_CACHE_SIZE: Final = 4096
_HASHER: Final = PasswordHash((Argon2Hasher(),))


@functools.cache
def _dummy_hash() -> str:
    """Compared against when no account has the id asked for, so that an unknown id costs what
    a wrong secret costs (made on first use: hashing takes a good part of a second)."""
    return _HASHER.hash(secrets.token_urlsafe(16))


class UnknownKey(Unauthorized):
    """A token signed by a key this deployment's ring does not have (``kid``)."""

    def __init__(self, kid: str) -> None:
        super().__init__("token signed by a key this deployment lacks", id=AUTH_ID)
        self.kid = kid


class JWTAuth(Auth):
    def __init__(
        self,
        *,
        store: Store | None = None,
        keys: KeyRing | None = None,
        issuer: str = "micro",
        audience: str | None = None,
        ttl: float = 900.0,
        refresh_ttl: float = 30 * 86400.0,
        leeway: float = 10.0,
    ) -> None:
        if ttl <= 0 or refresh_ttl <= 0 or leeway < 0:
            raise ValueError("ttl and refresh_ttl must be positive, leeway not negative")
        self.issuer = issuer
        self.audience = audience or issuer
        self.ttl = ttl
        self.refresh_ttl = refresh_ttl
        self.leeway = leeway
        self.keys = keys or KeyRing(DEFAULT_PATH, keep=refresh_ttl + leeway)
        self._store_given = store
        self._table: Store | None = None
        self._owned_store: Store | None = None
        self._verified: dict[str, tuple[Account, float]] = {}
        self._loaded = False

    @classmethod
    def from_url(cls, url: str, *, parts: Parts | None = None) -> Self:
        split = urlsplit(url)
        if split.scheme != "jwt" or split.netloc or split.path not in ("", "/"):
            raise ValueError(f"a jwt auth URL is jwt:// with options after '?', got {url!r}")
        options = {key: values[-1] for key, values in parse_qs(split.query).items()}
        unknown = set(options) - _OPTIONS
        if unknown:
            raise ValueError(f"unknown jwt:// options: {', '.join(sorted(unknown))}")
        try:
            ttl = float(options.get("ttl", 900))
            refresh_ttl = float(options.get("refresh_ttl", 30 * 86400))
            leeway = float(options.get("leeway", 10))
        except ValueError:
            raise ValueError(f"ttl, refresh_ttl and leeway are seconds, in {url!r}") from None
        source = options.get("keys") or os.environ.get("MICRO_AUTH_KEYS") or DEFAULT_PATH
        ring = KeyRing(source, algorithm=options.get("alg", "EdDSA"), keep=refresh_ttl + leeway)
        auth = cls(
            store=parts.store if parts is not None else None,
            keys=ring,
            issuer=options.get("issuer", "micro"),
            audience=options.get("audience"),
            ttl=ttl,
            refresh_ttl=refresh_ttl,
            leeway=leeway,
        )
        auth.url = url
        return auth

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        # The keys are read when first needed: a service whose auth is open may never sign.
        if self._table is None:
            store = self._store_given
            if store is None:
                from ..store.memory import MemoryStore

                store = self._owned_store = MemoryStore()
            await store.start()
            self._table = store.table("auth")

    async def stop(self) -> None:
        if self._owned_store is not None:
            await self._owned_store.stop()
            self._owned_store = None
        self._table = None

    def _load_keys(self) -> None:
        if not self._loaded:
            self.keys.load()
            self._loaded = True

    @property
    def table(self) -> Store:
        if self._table is None:
            raise RuntimeError("start the auth first (a Service starts its own)")
        return self._table

    # -- accounts -----------------------------------------------------------------------------

    async def generate(
        self,
        id: str,
        *,
        scopes: Sequence[str] = (),
        type: AccountType = "user",
        metadata: Mapping[str, str] | None = None,
        secret: str | None = None,
    ) -> Account:
        check_account_id(id)
        if type not in ACCOUNT_TYPES:
            raise ValueError(f"an account type is 'user' or 'service', got {type!r}")
        if isinstance(scopes, str):
            raise ValueError("scopes is a list of strings, not one string")
        secret = secret or secrets.token_urlsafe(32)
        account = Account(
            id,
            type,
            tuple(dict.fromkeys(str(scope) for scope in scopes)),
            {str(k): str(v) for k, v in (metadata or {}).items()},
            self.issuer,
            time.time(),
        )
        record = {**account.public(), "hash": await asyncio.to_thread(_HASHER.hash, secret)}
        await self.table.write(f"accounts/{id}", orjson.dumps(record))
        account.secret = secret
        return account

    async def account(self, id: str) -> Account | None:
        data = await self._get(f"accounts/{check_account_id(id)}")
        return Account.from_dict(data) if data is not None else None

    async def accounts(self) -> list[Account]:
        records = await self.table.read("accounts/", prefix=True)
        return [Account.from_dict(orjson.loads(record.value)) for record in records]

    async def delete(self, id: str) -> bool:
        return await self.table.delete(f"accounts/{check_account_id(id)}")

    # -- tokens -------------------------------------------------------------------------------

    async def token(
        self,
        *,
        id: str | None = None,
        secret: str | None = None,
        refresh_token: str | None = None,
        expiry: float | None = None,
    ) -> Tokens:
        if expiry is not None and not 0 < expiry <= self.refresh_ttl:
            raise BadRequest(f"expiry is 0 to {self.refresh_ttl} seconds, got {expiry}", id=AUTH_ID)
        if refresh_token is not None:
            if id is not None or secret is not None:
                raise BadRequest("give an id and secret, or a refresh token, not both", id=AUTH_ID)
            account = await self._refreshed(refresh_token)
        elif id is not None and secret is not None:
            account = await self._credentials(id, secret)
        else:
            raise BadRequest("a token needs an id and secret, or a refresh token", id=AUTH_ID)
        return self._tokens(account, expiry or self.ttl)

    async def _credentials(self, id: str, secret: str) -> Account:
        try:
            check_account_id(id)
        except ValueError:
            raise Unauthorized("wrong account id or secret", id=AUTH_ID) from None
        data = await self._get(f"accounts/{id}")
        hashed = data["hash"] if data is not None else _dummy_hash()
        valid = await asyncio.to_thread(_HASHER.verify, secret, hashed)
        if data is None or not valid:
            raise Unauthorized("wrong account id or secret", id=AUTH_ID)
        return Account.from_dict(data)

    async def _refreshed(self, refresh_token: str) -> Account:
        claims = self.verify_claims(refresh_token, use="refresh")
        try:  # good once: the first to mark it used wins, any later use is refused
            await self.table.write(
                f"revoked/{claims['jti']}", b"1", ttl=self._left(claims), if_version=ABSENT
            )
        except Conflict:
            raise Unauthorized("this refresh token was revoked or used", id=AUTH_ID) from None
        account = await self.account(str(claims["sub"]))
        if account is None:
            raise Unauthorized("the account of this refresh token was deleted", id=AUTH_ID)
        return account

    def _left(self, claims: Mapping[str, Any]) -> float:
        return max(1.0, float(claims.get("exp", 0)) - time.time() + self.leeway)

    def _tokens(self, account: Account, expiry: float) -> Tokens:
        now = time.time()
        access = self.issue(account, expiry=expiry)
        refresh = self.issue(account, expiry=self.refresh_ttl, use="refresh")
        return Tokens(access, refresh, now + expiry, now + self.refresh_ttl)

    async def revoke(self, refresh_token: str) -> None:
        claims = self.verify_claims(refresh_token, use="refresh")
        await self.table.write(f"revoked/{claims['jti']}", b"1", ttl=self._left(claims))

    def issue(
        self,
        account: Account,
        *,
        expiry: float,
        use: str = "access",
        claims: Mapping[str, Any] | None = None,
    ) -> str:
        self._load_keys()
        # A node's registration is signed with the key peers have known the longest, so that
        # one that has not seen a rotation yet still trusts the node (and learns the new key
        # from its JWKS).
        key = self.keys.oldest if use == "node" else self.keys.signing
        now = int(time.time())
        payload: dict[str, Any] = {
            **(claims or {}),
            "iss": self.issuer,
            "aud": self.audience,
            "sub": account.id,
            "iat": now,
            "nbf": now,
            "exp": now + max(1, int(expiry)),
            "jti": uuid.uuid4().hex,
            "type": account.type,
            "scopes": list(account.scopes),
        }
        if account.metadata and use in ("access", "event"):
            payload["metadata"] = account.metadata
        header = {"alg": key.algorithm, "kid": key.kid, "typ": _TYPES[use]}
        return jwt.encode(header, payload, key.key, algorithms=[key.algorithm])

    async def inspect(self, token: str) -> Account:
        account = self.verify_token(token)
        if await self._get(f"accounts/{account.id}") is None:
            raise Unauthorized("the account of this token was deleted", id=AUTH_ID)
        return account

    def verify_token(self, token: str) -> Account:
        return self.verified(token)[0]

    def verified(self, token: str) -> tuple[Account, float]:
        cached = self._verified.get(token)
        if cached is not None:
            if time.time() < cached[1]:
                return cached
            del self._verified[token]
        claims = self.verify_claims(token, use="access")
        if len(self._verified) >= _CACHE_SIZE:
            self._verified.pop(next(iter(self._verified)))
        verified = self._verified[token] = (
            claims_account(claims),
            float(claims["exp"]) + self.leeway,
        )
        return verified

    def verify_claims(self, token: str, *, use: str, now: float | None = None) -> dict[str, Any]:
        if not isinstance(token, str) or not token:
            raise Unauthorized("no token", id=AUTH_ID)
        if len(token) > MAX_TOKEN_SIZE:
            raise Unauthorized(f"token over {MAX_TOKEN_SIZE} bytes", id=AUTH_ID)
        self._load_keys()
        try:
            header = jws.extract_compact(token.encode()).protected
            kid = header.get("kid")
            key = self.keys.find(kid)
            if key is None and self.keys.reload():
                key = self.keys.find(kid)
            if key is None:
                raise UnknownKey(str(kid)[:64])
            if header.get("alg") != key.algorithm:
                raise Unauthorized(
                    f"token algorithm {str(header.get('alg'))[:16]!r} is not its key's", id=AUTH_ID
                )
            if header.get("typ") != _TYPES.get(use):
                raise Unauthorized(f"not {_ARTICLES[use]} {use} token", id=AUTH_ID)
            if _FORBIDDEN_HEADERS & header.keys():
                raise Unauthorized("token headers name keys of their own", id=AUTH_ID)
            decoded = jwt.decode(token, key.key, algorithms=[key.algorithm])
            claims = dict(decoded.claims)
            clock = time.time() if now is None else now
            JWTClaimsRegistry(
                now=int(clock),
                leeway=int(self.leeway),
                iss={"essential": True, "value": self.issuer},
                aud={"essential": True, "value": self.audience},
                sub={"essential": True},
                exp={"essential": True},
            ).validate(claims)
        except JoseError as exc:
            why = exc.description or exc.error.replace("_", " ")
            raise Unauthorized(f"token rejected: {why}", id=AUTH_ID) from None
        except (ValueError, TypeError, KeyError):
            raise Unauthorized("token rejected: malformed", id=AUTH_ID) from None
        return claims

    def jwks(self) -> dict[str, Any]:
        self._load_keys()
        return self.keys.jwks()

    def reload_keys(self) -> bool:
        return self._loaded and self.keys.reload()

    def learn(self, jwks: Mapping[str, Any]) -> list[str]:
        self._load_keys()
        return self.keys.learn(dict(jwks))

    # -- rules --------------------------------------------------------------------------------

    async def grant(self, rule: Rule) -> None:
        await self.table.write(f"rules/{rule.id}", orjson.dumps(rule.to_dict()))

    async def delete_rule(self, id: str) -> bool:
        return await self.table.delete(f"rules/{id}")

    async def rules(self) -> list[Rule]:
        records = await self.table.read("rules/", prefix=True)
        return [Rule.from_dict(orjson.loads(record.value)) for record in records]

    async def _get(self, key: str) -> Any:
        try:
            [record] = await self.table.read(key)
        except NotFound:
            return None
        return orjson.loads(record.value)

    def __repr__(self) -> str:
        return f"JWTAuth(issuer={self.issuer!r}, keys={self.keys!r})"
