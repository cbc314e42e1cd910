"""What a request to the API gateway maps to, and how often a client may ask: the routes of
one service (its endpoints by path, path parameters included, and its RPC endpoints by Go
Micro's name rule) and the token buckets of the rate limit."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from ..errors import MethodNotAllowed, NotFound, NotImplemented, TooManyRequests
from ..naming import IDEMPOTENT_METHODS
from ..registry import Endpoint

__all__ = ["GATEWAY", "Rate", "RateLimited", "RateLimiter", "Route", "ServiceRoutes"]

GATEWAY: Final = "asgi-micro-api"
"""The name the gateway calls services under, and the ``id`` of the errors it raises."""
_PARAMETER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z_]+))?\}")
_NOT_NAME = re.compile(r"[^a-z0-9]")


# -- rate limits --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rate:
    """``per_second`` requests a second for each client, after a burst of up to ``burst``."""

    per_second: float
    burst: int

    def __post_init__(self) -> None:
        if not self.per_second > 0 or self.burst < 1:
            raise ValueError("a rate is more than 0 requests a second, with a burst of >= 1")

    @classmethod
    def parse(cls, text: str) -> Rate:
        """``"10/s"``, ``"600/m"`` or ``"1000/h"``: that many requests per unit, and as many at
        once."""
        count, _, unit = text.strip().partition("/")
        seconds = {"s": 1.0, "m": 60.0, "h": 3600.0}.get(unit.strip().lower() or "s")
        try:
            number = int(count)
        except ValueError:
            number = 0
        if seconds is None or number < 1:
            raise ValueError(f"a rate is '<requests>/s', '/m' or '/h', got {text!r}")
        return cls(per_second=number / seconds, burst=number)


class RateLimiter:
    """A token bucket per client: ``take(client)`` is 0 when the request may go, else the
    seconds until it could. At most ``max_clients`` buckets are kept; beyond that, the full
    ones (clients quiet long enough to have every token back) are forgotten first."""

    def __init__(self, rate: Rate, *, max_clients: int = 100_000) -> None:
        self.rate = rate
        self.max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, when)

    def take(self, client: str, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        rate = self.rate
        tokens, when = self._buckets.get(client, (float(rate.burst), now))
        tokens = min(float(rate.burst), tokens + (now - when) * rate.per_second)
        if tokens < 1.0:
            self._buckets[client] = (tokens, now)
            return (1.0 - tokens) / rate.per_second
        if client not in self._buckets and len(self._buckets) >= self.max_clients:
            self._forget(now)
        self._buckets[client] = (tokens - 1.0, now)
        return 0.0

    def _forget(self, now: float) -> None:
        rate = self.rate
        full = [
            client
            for client, (tokens, when) in self._buckets.items()
            if tokens + (now - when) * rate.per_second >= rate.burst
        ]
        for client in full:
            del self._buckets[client]
        if len(self._buckets) >= self.max_clients:  # all busy: the oldest half goes
            for client in list(self._buckets)[: len(self._buckets) // 2]:
                del self._buckets[client]


class RateLimited(TooManyRequests):
    """429 from the gateway's rate limit; ``retry_after`` seconds go in ``Retry-After``."""

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail, id=GATEWAY)
        self.retry_after = retry_after


# -- routes -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Route:
    """Where a request goes: ``endpoint`` of ``service``, as ``method`` to ``target`` (the
    path and query the node is sent)."""

    service: str
    endpoint: Endpoint
    method: str
    target: str

    @property
    def idempotent(self) -> bool:
        metadata = self.endpoint.metadata
        if metadata.get("kind") == "rpc":
            return metadata.get("idempotent") == "true" and "stream" not in metadata
        return self.method in IDEMPOTENT_METHODS


class ServiceRoutes:
    """The endpoints of one service by path (``/items/{item_id}`` matches ``/items/7``) and,
    for RPC endpoints, by Go Micro's name rule."""

    def __init__(self, service: str, endpoints: Mapping[str, Endpoint]) -> None:
        self.service = service
        self.endpoints = dict(endpoints)
        self._exact: dict[str, list[Endpoint]] = {}
        self._templates: list[tuple[re.Pattern[str], list[Endpoint]]] = []
        self._named: dict[tuple[str, str], Endpoint] = {}
        templates: dict[str, list[Endpoint]] = {}
        for endpoint in endpoints.values():
            metadata = endpoint.metadata
            path = metadata.get("path")
            if not path:
                continue
            if metadata.get("kind") == "rpc" and metadata.get("method") != "WEBSOCKET":
                handler, _, method = endpoint.name.rpartition(".")
                self._named[(_normal(handler), _normal(method))] = endpoint
            if _PARAMETER.search(path):
                templates.setdefault(path, []).append(endpoint)
            else:
                self._exact.setdefault(path, []).append(endpoint)
        for path, found in templates.items():
            self._templates.append((_pattern(path), found))

    def route(self, method: str, path: str, query: str, raw_path: str) -> Route:
        """The endpoint a ``method`` request for ``path`` (after the service's name) reaches;
        ``NotFound`` or ``MethodNotAllowed`` (with the methods allowed in its detail)."""
        target = raw_path + (f"?{query}" if query else "")
        candidates = self._exact.get(path)
        if candidates is None:
            candidates = next((found for p, found in self._templates if p.fullmatch(path)), [])
        wanted = "GET" if method == "HEAD" else method
        for endpoint in candidates:
            if endpoint.metadata.get("method", "POST") == wanted:
                return Route(self.service, endpoint, method, target)
        if candidates:
            allowed = sorted({endpoint.metadata.get("method", "POST") for endpoint in candidates})
            raise MethodNotAllowed(
                f"{self.service} serves {path} for {', '.join(allowed)}, not {method}", id=GATEWAY
            )
        named = self._by_name(path)
        if named is not None:
            if method != "POST":
                raise MethodNotAllowed(f"{named.name} is called with POST", id=GATEWAY)
            rpc_target = named.metadata["path"] + (f"?{query}" if query else "")
            return Route(self.service, named, "POST", rpc_target)
        raise NotFound(
            f"{self.service} has no endpoint at {method} {path}; it serves: {self.summary()}",
            id=GATEWAY,
        )

    def by_endpoint(self, name: str) -> Route:
        """The RPC endpoint ``name`` (``Greeter.Hello``), for ``POST /rpc``."""
        endpoint = self.endpoints.get(name)
        if endpoint is None or endpoint.metadata.get("kind") != "rpc":
            known = sorted(n for n, e in self.endpoints.items() if e.metadata.get("kind") == "rpc")
            raise NotFound(
                f"{self.service} has no RPC endpoint {name}; it has: {', '.join(known) or 'none'}",
                id=GATEWAY,
            )
        if endpoint.metadata.get("method") == "WEBSOCKET":
            raise NotImplemented(  # noqa: F901  # asgi_micro.errors' 501
                f"{name} takes a stream of requests (a WebSocket): the gateway does not proxy it",
                id=GATEWAY,
            )
        return Route(self.service, endpoint, "POST", endpoint.metadata.get("path", ""))

    def summary(self) -> str:
        served = sorted(
            f"{e.metadata.get('method', 'POST')} {e.metadata['path']}"
            for e in self.endpoints.values()
            if e.metadata.get("path")
        )
        return ", ".join(served) or "nothing"

    def _by_name(self, path: str) -> Endpoint | None:
        """Go Micro's rule: ``/hello`` is ``<Service>.Hello``, ``/say/hello`` ``Say.Hello``."""
        parts = path[1:].split("/")
        if len(parts) == 1:
            parts = [self.service, *parts]
        if len(parts) != 2 or not all(parts):
            return None
        return self._named.get((_normal(parts[0]), _normal(parts[1])))


def _normal(name: str) -> str:
    """``Greeter``, ``greeter``, ``get_item`` and ``GetItem`` compare equal this way."""
    return _NOT_NAME.sub("", name.lower())


def _pattern(path: str) -> re.Pattern[str]:
    """The regular expression of a route template: ``{name}`` is one segment, ``{name:path}``
    the rest of the path."""
    parts: list[str] = []
    end = 0
    for match in _PARAMETER.finditer(path):
        parts.append(re.escape(path[end : match.start()]))
        parts.append(".+" if match.group(2) == "path" else "[^/]+")
        end = match.end()
    parts.append(re.escape(path[end:]))
    return re.compile("".join(parts))
