"""``jwt://``: accounts with hashed secrets, tokens, refresh tokens good once, revocation, and
rules, persisted in the store on every backend (memory, SQLite, PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from asgi_micro import auth as auth_module
from asgi_micro.auth import Access, Account, Resource, Rule
from asgi_micro.auth.jwt import JWTAuth
from asgi_micro.auth.keys import KeyRing
from asgi_micro.errors import AUTH_ID, BadRequest, Unauthorized
from tests.store.conftest import Harness, harness

__all__ = ["harness"]  # the store backends' fixture: every test here runs on each


@pytest.fixture
async def auth(harness: Harness, tmp_path: Path) -> AsyncIterator[JWTAuth]:
    async with harness.open() as store:
        # A database of its own: runs at the same time on one PostgreSQL do not meet.
        scoped = store.database(f"test_auth_{uuid.uuid4().hex[:12]}")
        async with JWTAuth(store=scoped, keys=KeyRing(tmp_path / "keys.json")) as opened:
            yield opened


async def test_an_account_gets_tokens_with_its_secret(auth: JWTAuth) -> None:
    account = await auth.generate("ada", scopes=["user", "user"], metadata={"team": "core"})
    assert account.secret is not None
    assert len(account.secret) >= 32
    assert account.scopes == ("user",)
    tokens = await auth.token(id="ada", secret=account.secret)
    assert 890 < tokens.expires_in() <= 900
    inspected = await auth.inspect(tokens.access_token)
    assert (inspected.id, inspected.type, inspected.scopes) == ("ada", "user", ("user",))
    assert inspected.metadata == {"team": "core"}
    assert inspected.secret is None
    with pytest.raises(Unauthorized, match="wrong account id or secret") as wrong:
        await auth.token(id="ada", secret="not it")
    with pytest.raises(Unauthorized, match="wrong account id or secret") as unknown:
        await auth.token(id="nobody", secret=account.secret)
    assert wrong.value.detail == unknown.value.detail  # which of the two was wrong is not told
    assert wrong.value.id == AUTH_ID


async def test_the_secret_is_stored_hashed_with_argon2(auth: JWTAuth) -> None:
    account = await auth.generate("ada")
    assert account.secret is not None
    [record] = await auth.table.read("accounts/ada")
    assert account.secret.encode() not in record.value
    assert orjson.loads(record.value)["hash"].startswith("$argon2id$")
    assert account.secret not in repr(account)


async def test_a_refresh_token_is_good_once(auth: JWTAuth) -> None:
    account = await auth.generate("ada")
    first = await auth.token(id="ada", secret=account.secret)
    second = await auth.token(refresh_token=first.refresh_token)
    assert (await auth.inspect(second.access_token)).id == "ada"
    with pytest.raises(Unauthorized, match="revoked or used"):
        await auth.token(refresh_token=first.refresh_token)
    await auth.revoke(second.refresh_token)
    with pytest.raises(Unauthorized, match="revoked or used"):
        await auth.token(refresh_token=second.refresh_token)


async def test_refresh_and_access_tokens_are_not_interchangeable(auth: JWTAuth) -> None:
    account = await auth.generate("ada")
    tokens = await auth.token(id="ada", secret=account.secret)
    with pytest.raises(Unauthorized, match="not an access token"):
        auth.verify_token(tokens.refresh_token)
    with pytest.raises(Unauthorized, match="not a refresh token"):
        await auth.token(refresh_token=tokens.access_token)


async def test_a_deleted_account_refreshes_no_more(auth: JWTAuth) -> None:
    account = await auth.generate("ada")
    tokens = await auth.token(id="ada", secret=account.secret)
    assert await auth.delete("ada")
    assert not await auth.delete("ada")
    with pytest.raises(Unauthorized, match="deleted"):
        await auth.token(refresh_token=tokens.refresh_token)
    with pytest.raises(Unauthorized, match="deleted"):
        await auth.inspect(tokens.access_token)
    # The access token itself lives until it expires (verify_token reads no store).
    assert auth.verify_token(tokens.access_token).id == "ada"


async def test_accounts_and_rules_persist(harness: Harness, tmp_path: Path) -> None:
    async with harness.open() as store:
        scoped = store.database(f"test_auth_{uuid.uuid4().hex[:12]}")
        ring = tmp_path / "keys.json"
        async with JWTAuth(store=scoped, keys=KeyRing(ring)) as first:
            account = await first.generate("svc", type="service", scopes=["service"])
            await first.grant(Rule("r1", "service", Resource("service", "greeter", "*")))
            await first.grant(Rule("r2", "", Resource("topic", "*", "*"), Access.DENY, 3))
        async with JWTAuth(store=scoped, keys=KeyRing(ring)) as second:
            assert [a.id for a in await second.accounts()] == ["svc"]
            assert {r.id for r in await second.rules()} == {"r1", "r2"}
            assert (await second.token(id="svc", secret=account.secret)).access_token
            assert await second.delete_rule("r1")
            assert [r.id for r in await second.rules()] == ["r2"]


async def test_bad_input_is_refused(auth: JWTAuth) -> None:
    with pytest.raises(ValueError, match="account id"):
        await auth.generate("")
    with pytest.raises(ValueError, match="account id"):
        await auth.generate("a/b")
    with pytest.raises(ValueError, match="account type"):
        await auth.generate("x", type="robot")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="list of strings"):
        await auth.generate("x", scopes="admin")
    with pytest.raises(BadRequest):
        await auth.token()
    with pytest.raises(BadRequest):
        await auth.token(id="x", secret="y", refresh_token="z")
    account = await auth.generate("ada")
    with pytest.raises(BadRequest, match="expiry"):
        await auth.token(id="ada", secret=account.secret, expiry=-1)


async def test_a_short_expiry(auth: JWTAuth) -> None:
    account = await auth.generate("ada")
    tokens = await auth.token(id="ada", secret=account.secret, expiry=60)
    assert 55 < tokens.expiry - time.time() <= 60


def test_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ring = tmp_path / "keys.json"
    auth = auth_module.from_url(f"jwt://?alg=RS256&keys={ring}&issuer=acme&ttl=60&leeway=2")
    assert isinstance(auth, JWTAuth)
    assert (auth.issuer, auth.audience, auth.ttl, auth.leeway) == ("acme", "acme", 60, 2)
    assert auth.keys.algorithm == "RS256"
    assert auth.keys.path == ring
    monkeypatch.setenv("MICRO_AUTH_KEYS", str(tmp_path / "env.json"))
    assert auth_module.from_url("jwt://").keys.path == tmp_path / "env.json"  # type: ignore[attr-defined]
    for bad in ("jwt://host", "jwt://?color=red", "jwt://?ttl=soon", "jwt://?alg=HS256"):
        with pytest.raises(ValueError):
            auth_module.from_url(bad)
    assert not auth_module.from_url("noop://").enabled


async def test_verified_tokens_are_cached_until_they_expire(tmp_path: Path) -> None:
    auth = JWTAuth(keys=KeyRing(tmp_path / "keys.json"), leeway=0)
    token = auth.issue(Account("ada"), expiry=1)
    assert auth.verify_token(token) is auth.verify_token(token)
    await asyncio.sleep(1.1)
    with pytest.raises(Unauthorized, match="token rejected: The token is expired"):
        auth.verify_token(token)


async def test_the_store_must_be_started_first(tmp_path: Path) -> None:
    auth = JWTAuth(keys=KeyRing(tmp_path / "keys.json"))
    with pytest.raises(RuntimeError, match="start the auth"):
        await auth.generate("ada")
