"""The auth interface: accounts, tokens and rules (Go Micro's ``auth.Auth``).

    account = await auth.generate("ada", scopes=["admin"])       # account.secret: shown once
    tokens = await auth.token(id="ada", secret=account.secret)   # access and refresh tokens
    tokens = await auth.token(refresh_token=tokens.refresh_token)
    account = await auth.inspect(tokens.access_token)
    await auth.grant(Rule("admins", "admin", Resource("service", "greeter", "*")))

An account is a user or a service (``type``), with ``scopes`` that rules grant to and metadata.
Its secret is returned by ``generate`` and never again: only a hash of it is kept. ``inspect``
raises ``Unauthorized`` for a token that is not a valid access token of this deployment, with
the reason (expired, unknown key...) and never the token.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from abc import abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from ..errors import AUTH_ID, Unauthorized
from ..plugins import Pluggable
from .rules import Rule

__all__ = [
    "ACCOUNT_TYPES",
    "Account",
    "Auth",
    "Tokens",
    "body_digest",
    "check_account_id",
    "claims_account",
]

AccountType = Literal["user", "service"]
ACCOUNT_TYPES: Final = ("user", "service")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:+-]{0,254}")


@dataclass(slots=True)
class Account:
    """Who calls: ``id``, ``type`` (``user`` or ``service``), ``scopes``, ``metadata``, and the
    ``issuer`` whose token said so. ``secret`` is set only on the account ``generate``
    returns."""

    id: str
    type: AccountType = "user"
    scopes: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    issuer: str = ""
    created: float = 0.0
    secret: str | None = field(default=None, repr=False, compare=False)

    def has_scopes(self, scopes: Iterable[str]) -> bool:
        return set(scopes) <= set(self.scopes)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Account:
        """The account ``public()`` (or a stored record) describes; ``ValueError`` for an
        unknown type."""
        kind = data.get("type", "user")
        if kind not in ACCOUNT_TYPES:
            raise ValueError(f"unknown account type {str(kind)[:16]!r}")
        return cls(
            id=str(data["id"]),
            type=kind,
            scopes=tuple(str(scope) for scope in data.get("scopes") or ()),
            metadata={str(k): str(v) for k, v in (data.get("metadata") or {}).items()},
            issuer=str(data.get("issuer", "")),
            created=float(data.get("created", 0.0)),
        )

    def public(self) -> dict[str, Any]:
        """What may be shown of the account: everything but a secret."""
        return {
            "id": self.id,
            "type": self.type,
            "scopes": list(self.scopes),
            "metadata": dict(self.metadata),
            "issuer": self.issuer,
            "created": self.created,
        }


@dataclass(frozen=True, slots=True)
class Tokens:
    """An access token and the refresh token that gets the next one; ``expiry`` and
    ``refresh_expiry`` are Unix seconds."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expiry: float
    refresh_expiry: float
    token_type: str = "Bearer"

    def expires_in(self) -> float:
        return self.expiry - time.time()

    def to_dict(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "token_type": self.token_type,
            "expiry": self.expiry,
            "refresh_expiry": self.refresh_expiry,
        }


def claims_account(claims: Mapping[str, Any]) -> Account:
    """The account a verified token's claims describe."""
    try:
        return Account.from_dict(
            {
                "id": claims["sub"],
                "type": claims.get("type", "user"),
                "scopes": claims.get("scopes"),
                "metadata": claims.get("metadata"),
                "issuer": claims.get("iss", ""),
            }
        )
    except ValueError as exc:
        raise Unauthorized(f"token rejected: {exc}", id=AUTH_ID) from None


def body_digest(body: bytes) -> str:
    """SHA-256 of an event's body, base64url without padding: what its token binds."""
    return base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode()


def check_account_id(id: object) -> str:
    if not isinstance(id, str) or not _ID.fullmatch(id):
        raise ValueError(
            "an account id is 1 to 255 letters, digits and . _ @ : + -, starting with a letter "
            f"or digit; got {id!r}"
        )
    return id


class Auth(Pluggable):
    """Accounts, tokens and rules of one deployment; ``jwt://`` or ``noop://``."""

    issuer: str = "micro"

    @property
    def enabled(self) -> bool:
        """Whether this backend checks anything (``noop://`` does not)."""
        return True

    @abstractmethod
    async def generate(
        self,
        id: str,
        *,
        scopes: Sequence[str] = (),
        type: AccountType = "user",
        metadata: Mapping[str, str] | None = None,
        secret: str | None = None,
    ) -> Account:
        """Create (or replace) the account ``id``; the account returned carries its secret,
        ``secret`` or a new random one."""

    @abstractmethod
    async def token(
        self,
        *,
        id: str | None = None,
        secret: str | None = None,
        refresh_token: str | None = None,
        expiry: float | None = None,
    ) -> Tokens:
        """Tokens for the account ``id`` with its ``secret``, or for the account a
        ``refresh_token`` names (which it then revokes: a refresh token is good once);
        ``expiry`` is the access token's lifetime in seconds."""

    @abstractmethod
    async def inspect(self, token: str) -> Account:
        """The account of a valid access token, or ``Unauthorized``."""

    @abstractmethod
    def verify_token(self, token: str) -> Account:
        """``inspect`` without I/O, for every call: cached until the token expires."""

    def verified(self, token: str) -> tuple[Account, float]:
        """``verify_token``, and until when (``time.time()`` seconds) its answer holds: a
        guard admits the token's calls to an endpoint it has admitted it to without asking
        again until then. By default the answer holds for no time (it is asked every call)."""
        return self.verify_token(token), 0.0

    def verify_event(self, token: str, *, topic: str, event_id: str, body: bytes) -> Account:
        """The publisher of an event, from the token made for that event alone (``event_token``):
        valid, and naming this topic, this event and this body."""
        claims = self.verify_claims(token, use="event")
        if (
            claims.get("topic") != topic
            or claims.get("event") != event_id
            or claims.get("digest") != body_digest(body)
        ):
            raise Unauthorized("the event's token was made for another event", id=AUTH_ID)
        return claims_account(claims)

    def event_token(
        self, account: Account, *, topic: str, event_id: str, body: bytes, expiry: float
    ) -> str:
        """A token for one event that ``account`` publishes: it proves that event and no
        other, and is no good for a call."""
        claims = {"topic": topic, "event": event_id, "digest": body_digest(body)}
        return self.issue(account, expiry=expiry, use="event", claims=claims)

    @abstractmethod
    async def revoke(self, refresh_token: str) -> None:
        """Make ``refresh_token`` unusable."""

    @abstractmethod
    async def account(self, id: str) -> Account | None: ...

    @abstractmethod
    async def accounts(self) -> list[Account]: ...

    @abstractmethod
    async def delete(self, id: str) -> bool:
        """Delete the account ``id``: its refresh tokens stop working at once, its access
        tokens when they expire."""

    @abstractmethod
    async def grant(self, rule: Rule) -> None:
        """Add (or replace) a rule."""

    @abstractmethod
    async def delete_rule(self, id: str) -> bool: ...

    @abstractmethod
    async def rules(self) -> list[Rule]: ...

    @abstractmethod
    def issue(
        self,
        account: Account,
        *,
        expiry: float,
        use: str = "access",
        claims: Mapping[str, Any] | None = None,
    ) -> str:
        """A token for ``account`` signed here, without its secret: a service's own identity
        (``use="access"``) or a statement about its node (``use="node"``, with ``claims``)."""

    @abstractmethod
    def verify_claims(self, token: str, *, use: str, now: float | None = None) -> dict[str, Any]:
        """The claims of a valid token of ``use`` signed by this deployment, or
        ``Unauthorized``."""

    @abstractmethod
    def jwks(self) -> dict[str, Any]:
        """The public keys that verify this deployment's tokens."""

    def reload_keys(self) -> bool:
        """Read the keys again if their source changed (a rotation by another process);
        whether they did."""
        return False

    def learn(self, jwks: Mapping[str, Any]) -> list[str]:
        """Take the keys of a JWKS a trusted peer serves (see ``KeyRing.learn``); the kids
        learnt. A backend without keys learns nothing."""
        return []
