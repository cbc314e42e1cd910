"""Rules: who may call what, with Go Micro's semantics.

A ``Rule`` grants or denies a ``scope`` access to a ``Resource``: ``type`` is ``service`` for an
endpoint (an RPC, a plain route, an internal route) and ``topic`` for an event a subscriber
takes; ``name`` is the service that serves it; ``endpoint`` is the endpoint's registry name
(``Greeter.Hello``, ``GET /items/{item_id}``) or the topic. Names, never raw URL paths: a path
spelled another way is the same endpoint or none, so it cannot slip past a rule.

``verify`` decides: of the rules whose resource matches (``*`` matches anything; a pattern
ending in ``*`` matches what starts with the rest, so ``Greeter.*`` covers every method), the
highest priority first, and at the same priority a deny before a grant, the first that applies
to the caller decides. Scope ``""`` applies to everyone, signed in or not; ``"*"`` to any
signed-in account; any other scope to accounts that hold it. When no rule applies the call is
denied: 401 (``Unauthorized``) for a caller without a valid token, who might get one, 403
(``Forbidden``) for an account that lacks the rule.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Final, NoReturn

from ..errors import AUTH_ID, Forbidden, Unauthorized

if TYPE_CHECKING:
    from .base import Account

__all__ = [
    "PUBLIC",
    "SIGNED_IN",
    "Access",
    "Resource",
    "Rule",
    "decide",
    "ordered",
    "refuse",
    "verify",
]

PUBLIC: Final = ""
"""The scope of a rule for everyone, signed in or not."""
SIGNED_IN: Final = "*"
"""The scope of a rule for any signed-in account."""

_TYPES: Final = ("service", "topic", "*")


class Access(enum.StrEnum):
    GRANT = "grant"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class Resource:
    """What a call reaches: ``Resource("service", "greeter", "Greeter.Hello")``, or for an
    event ``Resource("topic", "greeter", "user.created")``."""

    type: str
    name: str
    endpoint: str = "*"

    def __post_init__(self) -> None:
        if self.type not in _TYPES:
            raise ValueError(f"a resource type is 'service', 'topic' or '*', got {self.type!r}")
        for what in ("name", "endpoint"):
            value = getattr(self, what)
            if not isinstance(value, str) or not value:
                raise ValueError(f"a resource {what} is a non-empty string, got {value!r}")

    def covers(self, other: Resource) -> bool:
        """Whether this resource, as a rule names it (patterns allowed), matches ``other``."""
        return (
            _matches(self.type, other.type)
            and _matches(self.name, other.name)
            and _matches(self.endpoint, other.endpoint)
        )

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{self.endpoint}"


@dataclass(frozen=True, slots=True)
class Rule:
    """``access`` for accounts with ``scope`` (``""``: everyone, ``"*"``: signed in) to
    ``resource``; rules of higher ``priority`` are looked at first."""

    id: str
    scope: str
    resource: Resource
    access: Access = Access.GRANT
    priority: int = 0
    metadata: dict[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id or len(self.id) > 255:
            raise ValueError(f"a rule id is a string of 1 to 255 characters, got {self.id!r}")
        if not isinstance(self.scope, str):
            raise ValueError(f"a rule scope is a string, got {self.scope!r}")
        if not isinstance(self.priority, int) or isinstance(self.priority, bool):
            raise ValueError(f"a rule priority is an int, got {self.priority!r}")
        object.__setattr__(self, "access", Access(self.access))

    def applies_to(self, account: Account | None) -> bool:
        if self.scope == PUBLIC:
            return True
        if account is None:
            return False
        return self.scope == SIGNED_IN or self.scope in account.scopes

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["access"] = str(self.access)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rule:
        resource = data.get("resource") or {}
        return cls(
            id=data["id"],
            scope=data.get("scope", PUBLIC),
            resource=Resource(
                resource.get("type", "*"), resource.get("name", "*"), resource.get("endpoint", "*")
            ),
            access=Access(data.get("access", Access.GRANT)),
            priority=int(data.get("priority", 0)),
            metadata=dict(data.get("metadata") or {}),
        )


def ordered(rules: Iterable[Rule]) -> list[Rule]:
    """Highest priority first; at the same priority a deny before a grant (deny wins a tie);
    then by id, so that the order never depends on how the rules were stored."""
    return sorted(rules, key=lambda rule: (-rule.priority, rule.access != Access.DENY, rule.id))


def decide(rules: Sequence[Rule], account: Account | None, resource: Resource) -> Rule | None:
    """The rule that decides for ``account`` on ``resource`` (``rules`` already ``ordered``),
    or ``None`` when none applies."""
    for rule in rules:
        if rule.resource.covers(resource) and rule.applies_to(account):
            return rule
    return None


def verify(
    rules: Sequence[Rule], account: Account | None, resource: Resource, *, reason: str = ""
) -> None:
    """Raise ``Unauthorized`` or ``Forbidden`` unless ``rules`` (``ordered``) grant
    ``account`` (``None``: no valid token, ``reason`` says why) access to ``resource``."""
    rule = decide(rules, account, resource)
    if rule is None or rule.access != Access.GRANT:
        refuse(rule, account, resource, reason)


def refuse(rule: Rule | None, account: Account | None, resource: Resource, reason: str) -> NoReturn:
    """Raise what the caller gets when ``rule`` (``None``: no rule applies) does not grant it
    ``resource``."""
    if account is None:
        why = f": {reason}" if reason else ""
        raise Unauthorized(f"{resource.endpoint} needs a valid token{why}", id=AUTH_ID)
    denied = f"rule {rule.id} denies it" if rule is not None else "no rule grants it"
    raise Forbidden(f"{account.id} may not call {resource.endpoint}: {denied}", id=AUTH_ID)


def _matches(pattern: str, value: str) -> bool:
    if pattern == "*" or pattern == value:
        return True
    return pattern.endswith("*") and value.startswith(pattern[:-1])
