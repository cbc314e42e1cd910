"""Auth: accounts, tokens, rules, and the guard that enforces them on every protocol.

``jwt://`` (the embedded default: keys under ``.micro/auth/``) or ``noop://``; see
``asgi_micro.auth.jwt`` for the tokens, ``asgi_micro.auth.rules`` for the rules and
``asgi_micro.auth.guard`` for what a service does with them.
"""

from __future__ import annotations

from typing import Final

from ..plugins import Backend, Parts, load_backend
from .base import Account, Auth, Tokens
from .keys import KeyRing
from .rules import PUBLIC, SIGNED_IN, Access, Resource, Rule, verify

__all__ = [
    "DEFAULT_URL",
    "PUBLIC",
    "SIGNED_IN",
    "Access",
    "Account",
    "Auth",
    "KeyRing",
    "Resource",
    "Rule",
    "Tokens",
    "from_url",
    "verify",
]

DEFAULT_URL: Final = "jwt://"

BACKENDS: dict[str, Backend] = {
    "jwt": Backend("asgi_micro.auth.jwt:JWTAuth"),
    "noop": Backend("asgi_micro.auth.noop:NoopAuth"),
}


def from_url(url: str, *, parts: Parts | None = None) -> Auth:
    """The auth ``url`` names: ``jwt://[?options]`` or ``noop://``."""
    auth: Auth = load_backend("auth", url, BACKENDS, parts=parts)
    return auth
