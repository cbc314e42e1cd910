"""The key ring: made once with mode 0600, shared by processes, rotated without breaking
tokens, and never taking a key or an algorithm from a token."""

from __future__ import annotations

import asyncio
import multiprocessing
import stat
from pathlib import Path

import orjson
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from asgi_micro.auth.base import Account
from asgi_micro.auth.jwt import JWTAuth, UnknownKey
from asgi_micro.auth.keys import KeyRing, algorithm_named
from asgi_micro.errors import Unauthorized

ADA = Account("ada", scopes=("user",))


def test_a_new_ring_is_private(tmp_path: Path) -> None:
    path = tmp_path / "auth" / "keys.json"
    ring = KeyRing(path)
    ring.load()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [key.algorithm for key in ring] == ["Ed25519"]
    assert not list(tmp_path.glob("auth/.keys-*")), "no temporary file left behind"


def _load(path: str) -> str:
    ring = KeyRing(path)
    ring.load()
    return ring.signing.kid


def test_processes_that_start_together_share_one_ring(tmp_path: Path) -> None:
    path = str(tmp_path / "keys.json")
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        kids = pool.map(_load, [path] * 8)
    assert len(set(kids)) == 1


def test_jwks_holds_public_parts_only(tmp_path: Path) -> None:
    for algorithm in ("EdDSA", "RS256"):
        ring = KeyRing(tmp_path / f"{algorithm}.json", algorithm=algorithm)
        ring.load()
        [key] = ring.jwks()["keys"]
        assert key["kid"] == ring.signing.kid
        assert key["alg"] == algorithm_named(algorithm)
        assert not {"d", "p", "q", "dp", "dq", "qi"} & key.keys()


def test_a_ring_from_the_environment(tmp_path: Path) -> None:
    made = KeyRing(tmp_path / "keys.json")
    made.load()
    inline = KeyRing((tmp_path / "keys.json").read_text())
    inline.load()
    assert inline.signing.kid == made.signing.kid
    with pytest.raises(RuntimeError, match="rotated at its source"):
        inline.rotate()


def test_bad_rings_are_refused_without_showing_them(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text('{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "x", "alg": "HS256"}]}')
    path.chmod(0o600)
    with pytest.raises(ValueError, match="not a key ring") as error:
        KeyRing(path).load()
    assert "c2VjcmV0" not in str(error.value)
    public = KeyRing(tmp_path / "other.json")
    public.load()
    path.write_bytes(orjson.dumps(public.jwks()))
    with pytest.raises(ValueError, match="no private part"):
        KeyRing(path).load()
    with pytest.raises(FileNotFoundError):
        KeyRing(tmp_path / "missing.json", create=False).load()
    with pytest.raises(ValueError, match="EdDSA"):
        algorithm_named("HS256")


def test_a_readable_ring_is_used_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys.json"
    KeyRing(path).load()
    path.chmod(0o644)
    KeyRing(path).load()
    assert "should be 0600" in caplog.text


async def test_a_retired_key_verifies_until_its_tokens_expire(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    auth = JWTAuth(keys=KeyRing(path, keep=2.0))
    old = auth.issue(ADA, expiry=60)
    # Another process rotates: this one reads the ring again on meeting the new kid.
    rotated = KeyRing(path, keep=2.0)
    new_key = rotated.rotate()
    other = JWTAuth(keys=rotated)
    new = other.issue(ADA, expiry=60)
    assert auth.verify_token(new).id == "ada"
    assert auth.verify_token(old).id == "ada"
    assert auth.keys.signing.kid == new_key.kid
    assert {key["kid"] for key in auth.jwks()["keys"]} == {new_key.kid, auth.keys.oldest.kid}
    # Past ``keep`` the retired key no longer verifies, nor is it served.
    await asyncio.sleep(2.1)
    with pytest.raises(UnknownKey):
        auth.verify_claims(old, use="access")
    assert [key["kid"] for key in auth.jwks()["keys"]] == [new_key.kid]


def test_a_key_never_verifies_with_an_algorithm_a_token_chooses(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path / "keys.json", algorithm="RS256")
    auth = JWTAuth(keys=ring)
    good = auth.issue(ADA, expiry=60)
    key = ring.signing
    # The attacker holds the right key (say, leaked) and signs under another algorithm: RS384.
    unbound = RSAKey.import_key({k: v for k, v in key.to_dict().items() if k != "alg"})
    other = jwt.encode(
        {"alg": "RS384", "kid": key.kid, "typ": "at+jwt"},
        jwt.decode(good, key.key, algorithms=["RS256"]).claims,
        unbound,
        algorithms=["RS384"],
    )
    with pytest.raises(Unauthorized, match="not its key"):
        auth.verify_token(other)
    assert auth.verify_token(good).id == "ada"


async def test_keys_learnt_from_a_peer_verify_but_never_sign(tmp_path: Path) -> None:
    mine = KeyRing(tmp_path / "mine.json")
    mine.load()
    theirs = KeyRing(tmp_path / "theirs.json")
    theirs.load()
    peer = JWTAuth(keys=theirs)
    auth = JWTAuth(keys=mine)
    token = peer.issue(ADA, expiry=60)
    with pytest.raises(UnknownKey):
        auth.verify_token(token)
    assert auth.learn(peer.jwks()) == [theirs.signing.kid]
    assert auth.learn(peer.jwks()) == []  # known now
    assert auth.verify_token(token).id == "ada"
    assert auth.keys.signing.kid == mine.signing.kid
    assert theirs.signing.kid not in {key["kid"] for key in auth.jwks()["keys"]}
    # Private members a JWKS should never carry are not taken even if it does.
    leaked = {"keys": [dict(theirs.signing.to_dict(), kid="leaked")]}
    auth.learn(leaked)
    assert not auth.keys.find("leaked").key.is_private  # type: ignore[union-attr]
