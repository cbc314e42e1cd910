"""Signing keys: a key ring of JWKs, kept in a file, rotated without breaking tokens.

The ring holds one signing key and the keys it replaced. Every token names its key (``kid``);
a retired key signs nothing more but still verifies until the last token it signed has
expired (``keep`` seconds after its retirement), then leaves the ring. The algorithm of each
key is fixed when it is made (``Ed25519``, the EdDSA curve under its RFC 9864 name, or
``RS256``) and is the only one accepted for it: a token's ``alg`` header never chooses how it
is checked.

Where the keys come from: ``MICRO_AUTH_KEYS`` (a path to the ring's file, or the ring itself as
JSON, for a secret injected through the environment), else ``.micro/auth/keys.json``, made on
first use. Every service of a deployment reads the same ring: that is what lets one verify the
tokens of another. Files are written atomically, mode 0600, in a directory of mode 0700; a ring
whose file others may read is used, with a warning.

All of the cryptography is joserfc's (the successor of authlib's JOSE support).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson
from joserfc.errors import JoseError
from joserfc.jwk import KeyParameters, KeySet, OKPKey, RSAKey

__all__ = ["ALGORITHMS", "DEFAULT_PATH", "KeyRing", "RingKey", "algorithm_named"]

logger = logging.getLogger(__name__)

DEFAULT_PATH: Final = Path(".micro/auth/keys.json")
ALGORITHMS: Final = ("Ed25519", "RS256")
_ALIASES: Final = {"eddsa": "Ed25519", "ed25519": "Ed25519", "rs256": "RS256"}
_RETIRED: Final = "micro_retired"  # a JWK member of ours: when the key stopped signing
_CREATED: Final = "micro_created"
_PRIVATE: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


def algorithm_named(name: str) -> str:
    """``EdDSA``/``Ed25519`` or ``RS256``, as the ring names them; anything else raises."""
    found = _ALIASES.get(name.strip().lower())
    if found is None:
        raise ValueError(f"the signing algorithm is EdDSA (Ed25519) or RS256, got {name!r}")
    return found


@dataclass(slots=True)
class RingKey:
    """One key of the ring: the JWK (private part included), its algorithm, and when it was
    made and retired (Unix seconds; ``None`` while it signs)."""

    key: OKPKey | RSAKey
    algorithm: str
    created: float
    retired: float | None = None

    @property
    def kid(self) -> str:
        return str(self.key.kid)

    @classmethod
    def generate(cls, algorithm: str, now: float) -> RingKey:
        parameters: KeyParameters = {"kid": uuid.uuid4().hex, "use": "sig", "alg": algorithm}
        key: OKPKey | RSAKey
        if algorithm == "RS256":
            key = RSAKey.generate_key(2048, parameters=parameters)
        else:
            key = OKPKey.generate_key("Ed25519", parameters=parameters)
        return cls(key, algorithm, now)

    def public(self) -> dict[str, Any]:
        """The JWK that JWKS serves: the public part only."""
        return dict(self.key.as_dict(private=False))

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = dict(self.key.as_dict(private=True))
        data[_CREATED] = self.created
        if self.retired is not None:
            data[_RETIRED] = self.retired
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RingKey:
        data = dict(data)
        created = float(data.pop(_CREATED, 0.0))
        retired = data.pop(_RETIRED, None)
        algorithm = algorithm_named(str(data.get("alg", "")))
        if not data.get("kid"):
            raise ValueError("every key of the ring needs a kid")
        key: OKPKey | RSAKey = (
            RSAKey.import_key(data) if algorithm == "RS256" else OKPKey.import_key(data)
        )
        if not key.is_private:
            raise ValueError(f"key {data['kid']} has no private part: a ring signs")
        return cls(key, algorithm, created, None if retired is None else float(retired))


class KeyRing:
    """The keys one deployment signs and verifies with.

    ``source`` is a path or the ring as JSON text. ``algorithm`` is what a new key uses;
    ``keep`` is how long a retired key still verifies (the longest lifetime of a token).
    """

    def __init__(
        self,
        source: str | Path = DEFAULT_PATH,
        *,
        algorithm: str = "Ed25519",
        keep: float = 30 * 86400.0,
        create: bool = True,
    ) -> None:
        self.algorithm = algorithm_named(algorithm)
        self.keep = keep
        self.inline = isinstance(source, str) and source.lstrip().startswith("{")
        self.path: Path | None = None if self.inline else Path(source)
        self._text = str(source) if self.inline else ""
        self._create = create
        self._keys: list[RingKey] = []
        self._learnt: dict[str, RingKey] = {}  # public keys peers taught: verify only
        self._set: KeySet = KeySet([])
        self._mtime: float | None = None

    # -- loading ------------------------------------------------------------------------------

    def load(self) -> None:
        """Read the ring (making it when its default file does not exist yet)."""
        if self.inline:
            self._use(_parse(self._text.encode(), "MICRO_AUTH_KEYS"), None)
            return
        assert self.path is not None
        if not self.path.exists():
            if not self._create:
                raise FileNotFoundError(f"no key ring at {self.path}")
            self._make()
        self._read()

    def reload(self) -> bool:
        """Read the ring's file again if it changed since (another process rotated it);
        whether it did."""
        if self.path is None:
            return False
        with contextlib.suppress(FileNotFoundError):
            if self.path.stat().st_mtime != self._mtime:
                self._read()
                return True
        return False

    def _read(self) -> None:
        assert self.path is not None
        mode = self.path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            logger.warning(
                "the key ring %s can be read by others (mode %o); it should be 0600",
                self.path,
                stat.S_IMODE(mode),
            )
        data = self.path.read_bytes()
        self._use(_parse(data, str(self.path)), self.path.stat().st_mtime)

    def _make(self) -> None:
        """The first key, written unless another process got there first (then theirs)."""
        assert self.path is not None
        _private_dir(self.path.parent)
        ring = [RingKey.generate(self.algorithm, time.time())]
        with contextlib.suppress(FileExistsError):
            _write(self.path, ring, exclusive=True)
            logger.info("made a new signing key (%s) in %s", self.algorithm, self.path)

    def _use(self, keys: list[RingKey], mtime: float | None) -> None:
        if not any(key.retired is None for key in keys):
            raise ValueError("the key ring has no key that signs (every key is retired)")
        self._keys = keys
        self._set = KeySet([key.key for key in keys])
        self._mtime = mtime

    # -- using --------------------------------------------------------------------------------

    @property
    def keys(self) -> list[RingKey]:
        return list(self._keys)

    @property
    def signing(self) -> RingKey:
        """The newest key that is not retired: what signs."""
        if not self._keys:
            self.load()
        active = [key for key in self._keys if key.retired is None]
        return max(active, key=lambda key: key.created)

    @property
    def oldest(self) -> RingKey:
        """The oldest key that still verifies: what signs statements that peers must be able to
        check across a rotation (a node's registration), since they know it the longest."""
        if not self._keys:
            self.load()
        now = time.time()
        return min(
            (key for key in self._keys if self.find(key.kid, now) is not None),
            key=lambda key: key.created,
        )

    def find(self, kid: object, now: float | None = None) -> RingKey | None:
        """The key ``kid`` names, if it still verifies; ``None`` for one the ring does not
        have (or no longer keeps)."""
        now = time.time() if now is None else now
        for key in self._keys:
            if key.kid == kid:
                if key.retired is not None and key.retired + self.keep < now:
                    return None
                return key
        learnt = self._learnt.get(kid) if isinstance(kid, str) else None
        if learnt is not None and learnt.created + self.keep < now:
            del self._learnt[learnt.kid]
            return None
        return learnt

    def learn(self, jwks: object) -> list[str]:
        """Take the public keys of a JWKS that a trusted peer serves (one whose registration
        verified under this ring): keys made by a rotation this process has not read yet. They
        verify, never sign, for ``keep`` seconds. Returns the kids learnt."""
        if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
            raise ValueError("a JWKS is {'keys': [JWK, ...]}")
        learnt = []
        now = time.time()
        for item in jwks["keys"]:
            if not isinstance(item, dict) or not isinstance(item.get("kid"), str):
                continue
            kid = item["kid"]
            if self.find(kid, now) is not None:
                continue
            try:
                algorithm = algorithm_named(str(item.get("alg", "")))
                public = {name: value for name, value in item.items() if name not in _PRIVATE}
                key: OKPKey | RSAKey = (
                    RSAKey.import_key(public) if algorithm == "RS256" else OKPKey.import_key(public)
                )
            except (ValueError, TypeError, KeyError, JoseError):
                continue  # not a key of ours: nothing to learn from it
            self._learnt[kid] = RingKey(key, algorithm, now)
            learnt.append(kid)
        return learnt

    @property
    def key_set(self) -> KeySet:
        return self._set

    @property
    def algorithms(self) -> list[str]:
        return sorted({key.algorithm for key in self._keys})

    def jwks(self) -> dict[str, Any]:
        """The JSON Web Key Set of the keys that still verify: public parts only."""
        now = time.time()
        return {"keys": [key.public() for key in self._keys if self.find(key.kid, now)]}

    def __iter__(self) -> Iterator[RingKey]:
        return iter(self._keys)

    # -- rotating -----------------------------------------------------------------------------

    def rotate(self, *, algorithm: str | None = None) -> RingKey:
        """A new signing key; the one before it retires (and still verifies for ``keep``
        seconds), and keys retired longer ago than that leave the ring. Written to the
        ring's file, which the other services read again when they meet the new ``kid``."""
        if self.path is None:
            raise RuntimeError("a ring given as JSON (MICRO_AUTH_KEYS) is rotated at its source")
        self.load()
        now = time.time()
        new = RingKey.generate(algorithm_named(algorithm or self.algorithm), now)
        kept = []
        for key in self._keys:
            if key.retired is None:
                key.retired = now
            if key.retired + self.keep >= now:
                kept.append(key)
        ring = [*kept, new]
        _write(self.path, ring, exclusive=False)
        self._read()
        return new

    def __repr__(self) -> str:
        where = "MICRO_AUTH_KEYS" if self.inline else str(self.path)
        return f"KeyRing({where!r}, keys={len(self._keys)})"


def _parse(data: bytes, where: str) -> list[RingKey]:
    try:
        document = orjson.loads(data)
        return [RingKey.from_dict(item) for item in document["keys"]]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        # Never the text itself: it holds private keys.
        raise ValueError(f"{where} is not a key ring ({{'keys': [JWK, ...]}}): {exc}") from None


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(PermissionError):
        path.chmod(0o700)


def _write(path: Path, ring: list[RingKey], *, exclusive: bool) -> None:
    """Write atomically, mode 0600 from the first byte: a temporary file renamed (or, for
    ``exclusive``, linked, which fails when the file exists) into place."""
    _private_dir(path.parent)
    data = orjson.dumps({"keys": [key.to_dict() for key in ring]}, option=orjson.OPT_INDENT_2)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".keys-", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        if exclusive:
            os.link(temporary, path)
        else:
            os.replace(temporary, path)
    finally:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
