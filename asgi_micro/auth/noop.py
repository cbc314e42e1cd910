"""``noop://``: no auth at all. Nothing is checked, every call is allowed, no token is made;
the ``Micro-From-Service`` a caller sends is taken as it is (which is what turning auth off
means). For tests of code that does not care, and for services behind a gateway that checks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Self

from ..errors import AUTH_ID, NotImplemented, Unauthorized
from ..plugins import Parts
from .base import Account, AccountType, Auth, Tokens
from .rules import Rule

__all__ = ["NoopAuth"]


class NoopAuth(Auth):
    @classmethod
    def from_url(cls, url: str, *, parts: Parts | None = None) -> Self:
        auth = cls()
        auth.url = url
        return auth

    @property
    def enabled(self) -> bool:
        return False

    def _off(self) -> NotImplemented:
        return NotImplemented("auth is off (noop://): no accounts, tokens or rules", id=AUTH_ID)

    async def generate(
        self,
        id: str,
        *,
        scopes: Sequence[str] = (),
        type: AccountType = "user",
        metadata: Mapping[str, str] | None = None,
        secret: str | None = None,
    ) -> Account:
        raise self._off()

    async def token(
        self,
        *,
        id: str | None = None,
        secret: str | None = None,
        refresh_token: str | None = None,
        expiry: float | None = None,
    ) -> Tokens:
        raise self._off()

    async def inspect(self, token: str) -> Account:
        raise Unauthorized("auth is off (noop://): tokens are not read", id=AUTH_ID)

    def verify_token(self, token: str) -> Account:
        raise Unauthorized("auth is off (noop://): tokens are not read", id=AUTH_ID)

    def verify_claims(self, token: str, *, use: str, now: float | None = None) -> dict[str, Any]:
        raise Unauthorized("auth is off (noop://): tokens are not read", id=AUTH_ID)

    async def revoke(self, refresh_token: str) -> None:
        raise self._off()

    async def account(self, id: str) -> Account | None:
        return None

    async def accounts(self) -> list[Account]:
        return []

    async def delete(self, id: str) -> bool:
        return False

    async def grant(self, rule: Rule) -> None:
        raise self._off()

    async def delete_rule(self, id: str) -> bool:
        return False

    async def rules(self) -> list[Rule]:
        return []

    def issue(
        self,
        account: Account,
        *,
        expiry: float,
        use: str = "access",
        claims: Mapping[str, Any] | None = None,
    ) -> str:
        raise self._off()

    def jwks(self) -> dict[str, Any]:
        return {"keys": []}
