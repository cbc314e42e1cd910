"""Resilience policies per target: timeouts, retries, a retry budget, a circuit breaker, a
bulkhead and a fallback, for a service or one of its endpoints.

    client = Client(registry=registry, policies=Policies({
        "inventory": Policy(timeout=2.0, breaker=Breaker(failure_rate=0.5, min_calls=20)),
        "inventory/Inventory.Reserve": Policy(retries=0, bulkhead=Bulkhead(max_concurrent=8)),
    }, default=Policy(retry_budget=RetryBudget())))

A target is ``"<service>"`` or ``"<service>/<endpoint>"`` (``"greeter/Greeter.Hello"``; for a
``service.http()`` request the endpoint is ``"GET /items/1"``). A call is held to one policy,
merged field by field: what its endpoint's policy sets, else what its service's sets, else the
default's. The breaker, the bulkhead and the budget keep their state where they were declared:
one declared for ``"greeter"`` (or in the default) is one per service, shared by its endpoints
that declare none of their own; one declared for ``"greeter/Greeter.Hello"`` is that
endpoint's.

- ``timeout``: the call's deadline when the caller passes none (in place of the client's);
  the deadline of the request being handled still caps it.
- ``retries``: extra attempts, when the caller passes none (in place of the client's).
- ``retry_budget``: retries only while they stay under ``ratio`` of the calls of the last
  ``window`` seconds, plus ``min_per_second`` (Finagle's ``RetryBudget``), so that a failing
  target is not sent a multiple of its load in retries. A spent budget ends the call with its
  last error.
- ``breaker``: opens when, over the last ``window`` seconds and at least ``min_calls`` calls,
  ``failure_rate`` of them failed (a 5xx, a timeout, no connection; never a 4xx, which shows
  the target is up and the request wrong). While open, calls fail at once with
  ``ServiceUnavailable`` (id ``asgi_micro.client``) saying until when; after ``open_for``
  seconds it lets ``probes`` calls through: when all succeed it closes, when one fails it
  opens again.
- ``bulkhead``: at most ``max_concurrent`` calls in flight to the target and ``max_queue``
  waiting for a turn (within their deadline); beyond that a call fails at once with
  ``ServiceUnavailable``: 503 rather than 429, because the limit is this caller's protection
  of itself from a slow target, not the target saying that the caller sends too much (a
  gateway passing the error on must not tell its own caller to slow down).
- ``fallback``: ``async def fallback(call: ClientCall, error: MicroError) -> reply``, whose
  reply is the call's when it fails with 408, 502, 503 or 504 (no node, no connection, an
  open breaker, a full bulkhead, a timeout); not a 500 (a bug it would hide) nor a 4xx.

Policies apply to ``call()`` over HTTP and gRPC. A ``service.http()`` request is held to the
breaker, bulkhead, budget and fallback (which returns an ``httpx.Response`` there); its timeout
is httpx's and its retries the client's. Streams keep the client's options. In configuration
(``MICRO_POLICIES``: JSON, or the path of a JSON or TOML file) the targets are keys, ``"*"``
the default, fields as here and a fallback as ``"module:function"``.
"""

from __future__ import annotations

import importlib
import json
import os
import tomllib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import MicroError
from .calls import ClientCall

__all__ = ["Breaker", "Bulkhead", "Fallback", "Policies", "Policy", "RetryBudget"]

Fallback = Callable[[ClientCall, MicroError], Awaitable[Any] | Any]
"""``async def fallback(call, error) -> reply``: the reply of a call that failed."""


@dataclass(frozen=True, slots=True)
class Breaker:
    """A circuit breaker's settings (see the module's docstring)."""

    failure_rate: float = 0.5
    min_calls: int = 20
    window: float = 10.0
    open_for: float = 5.0
    probes: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.failure_rate <= 1 or self.min_calls < 1 or self.probes < 1:
            raise ValueError("need 0 < failure_rate <= 1, min_calls >= 1 and probes >= 1")
        if self.window <= 0 or self.open_for <= 0:
            raise ValueError("need window > 0 and open_for > 0")


@dataclass(frozen=True, slots=True)
class Bulkhead:
    """At most ``max_concurrent`` calls in flight, ``max_queue`` waiting."""

    max_concurrent: int = 10
    max_queue: int = 0

    def __post_init__(self) -> None:
        if self.max_concurrent < 1 or self.max_queue < 0:
            raise ValueError("need max_concurrent >= 1 and max_queue >= 0")


@dataclass(frozen=True, slots=True)
class RetryBudget:
    """Retries within ``ratio`` of the calls of the last ``window`` s, plus ``min_per_second``."""

    ratio: float = 0.2
    min_per_second: float = 10.0
    window: float = 10.0

    def __post_init__(self) -> None:
        if self.ratio < 0 or self.min_per_second < 0 or self.window <= 0:
            raise ValueError("need ratio >= 0, min_per_second >= 0 and window > 0")


@dataclass(frozen=True, slots=True)
class Policy:
    """What calls to one target are held to; ``None`` leaves a field to the wider policy."""

    timeout: float | None = None
    retries: int | None = None
    retry_budget: RetryBudget | None = None
    breaker: Breaker | None = None
    bulkhead: Bulkhead | None = None
    fallback: Fallback | None = None

    def __post_init__(self) -> None:
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError("need timeout > 0")
        if self.retries is not None and self.retries < 0:
            raise ValueError("need retries >= 0")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        """A policy from configuration: nested dicts for the parts, ``"module:function"``
        for the fallback."""
        unknown = set(data) - {field.name for field in fields(cls)}
        if unknown:
            raise ValueError(f"unknown policy fields: {', '.join(sorted(unknown))}")
        parts: dict[str, Any] = dict(data)
        for name, part in (("retry_budget", RetryBudget), ("breaker", Breaker)):
            if isinstance(parts.get(name), Mapping):
                parts[name] = part(**parts[name])
        if isinstance(parts.get("bulkhead"), Mapping):
            parts["bulkhead"] = Bulkhead(**parts["bulkhead"])
        if isinstance(parts.get("fallback"), str):
            parts["fallback"] = _import(parts["fallback"])
        return cls(**parts)


class Policies:
    """Policies by target (``"greeter"``, ``"greeter/Greeter.Hello"``) and a default."""

    def __init__(
        self, targets: Mapping[str, Policy] | None = None, *, default: Policy | None = None
    ) -> None:
        self.targets = dict(targets or {})
        self.default = default or Policy()

    def __bool__(self) -> bool:
        return bool(self.targets) or self.default != Policy()

    def layers(self, service: str, endpoint: str) -> list[tuple[str, Policy]]:
        """The policies a call to ``endpoint`` of ``service`` is held to, most specific first,
        each with the scope its breaker, bulkhead and budget are kept under."""
        found = [
            (f"{service}/{endpoint}", self.targets.get(f"{service}/{endpoint}")),
            (service, self.targets.get(service)),
            (service, self.default),
        ]
        return [(scope, policy) for scope, policy in found if policy is not None]

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, Any]]) -> Policies:
        """``{"*": {...}, "greeter": {...}, "greeter/Greeter.Hello": {...}}``."""
        targets = {target: Policy.from_dict(spec) for target, spec in data.items()}
        return cls({t: p for t, p in targets.items() if t != "*"}, default=targets.get("*"))

    @classmethod
    def load(cls, value: str) -> Policies:
        """From JSON text, or the path of a JSON or TOML file."""
        text = value.strip()
        if not text:
            return cls()
        if text.startswith("{"):
            return cls.from_dict(json.loads(text))
        path = Path(text)
        if path.suffix == ".toml":
            return cls.from_dict(tomllib.loads(path.read_text()))
        return cls.from_dict(json.loads(path.read_text()))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Policies:
        """From ``MICRO_POLICIES``; none when it is unset."""
        return cls.load(environ.get("MICRO_POLICIES", ""))


def _import(spec: str) -> Fallback:
    module_name, _, attribute = spec.partition(":")
    if not attribute:
        raise ValueError(f"a fallback is 'module:function', got {spec!r}")
    found: Fallback = getattr(importlib.import_module(module_name), attribute)
    return found
