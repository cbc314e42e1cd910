"""The live state of a client's policies (``asgi_micro.client.policies``): a circuit breaker,
a bulkhead and a retry budget per scope where one was declared, and ``Guards.run``, which holds
each call to its target's, then answers with its fallback.

Rolling windows (the breaker's calls and failures, the budget's calls and retries) are kept in
ten slices of the window's length with running totals, so a call costs a few additions.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections import deque
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any

from ..errors import CLIENT_ID, MicroError, ServiceUnavailable, Timeout
from .calls import ClientCall, ClientNext
from .policies import Breaker, Bulkhead, Policies, Policy, RetryBudget
from .retry import RETRYABLE_STATUSES

__all__ = ["CircuitBreaker", "Guards", "counts_as_failure"]

_MAX_TARGETS = 4096
_BUCKETS = 10  # a rolling window is kept as this many slices of its length


class _Window:
    """Counts of calls and of failures (or retries) over the last ``length`` seconds, kept in
    slices of a tenth of it, with running totals."""

    __slots__ = ("_slices", "_width", "calls", "marked")

    def __init__(self, length: float) -> None:
        self._width = length / _BUCKETS
        self._slices: deque[list[float]] = deque()  # [start, calls, marked]
        self.calls = 0
        self.marked = 0

    def add(self, *, calls: int = 0, marked: int = 0) -> None:
        now = time.monotonic()
        self.trim(now)
        if not self._slices or now - self._slices[-1][0] >= self._width:
            self._slices.append([now, 0, 0])
        last = self._slices[-1]
        last[1] += calls
        last[2] += marked
        self.calls += calls
        self.marked += marked

    def trim(self, now: float) -> None:
        """Drop the slices that ended more than the window's length before ``now``."""
        horizon = now - self._width * (_BUCKETS + 1)
        slices = self._slices
        while slices and slices[0][0] <= horizon:
            _, calls, marked = slices.popleft()
            self.calls -= int(calls)
            self.marked -= int(marked)

    def clear(self) -> None:
        self._slices.clear()
        self.calls = self.marked = 0


class CircuitBreaker:
    """The state of one breaker: closed, open until a time, or half-open with probes out."""

    def __init__(self, settings: Breaker, target: str) -> None:
        self.settings = settings
        self.target = target
        self.state = "closed"
        self.open_until = 0.0
        self._calls = _Window(settings.window)
        self._generation = 0  # which half-open round a probe belongs to
        self._probes_sent = 0
        self._probes_passed = 0
        self._why = ""

    def admit(self) -> int | None:
        """Let a call through: ``None`` for an ordinary one, else the probe's round. Raises
        ``ServiceUnavailable`` while open, and while half-open with every probe out."""
        if self.state == "open":
            left = self.open_until - time.monotonic()
            if left > 0:
                until = datetime.fromtimestamp(time.time() + left, UTC).strftime("%H:%M:%S.%f")
                raise ServiceUnavailable(
                    f"circuit breaker for {self.target} is open until {until[:-3]} UTC "
                    f"({left:.1f}s more): {self._why}",
                    id=CLIENT_ID,
                )
            self.state, self._probes_sent, self._probes_passed = "half-open", 0, 0
            self._generation += 1
        if self.state == "half-open":
            if self._probes_sent >= self.settings.probes:
                raise ServiceUnavailable(
                    f"circuit breaker for {self.target} is half-open: its "
                    f"{self.settings.probes} probe call(s) are out",
                    id=CLIENT_ID,
                )
            self._probes_sent += 1
            return self._generation
        return None

    def record(self, probe: int | None, failed: bool | None) -> None:
        """The outcome of a call ``admit`` let through; ``None`` when it says nothing of the
        target (cancelled, or stopped before it was sent)."""
        if probe is not None:
            if probe != self._generation or self.state != "half-open":
                return  # a probe of an earlier round
            if failed is None:
                self._probes_sent -= 1
            elif failed:
                self._open("a probe call failed")
            else:
                self._probes_passed += 1
                if self._probes_passed >= self.settings.probes:
                    self.state = "closed"
                    self._calls.clear()
            return
        if failed is None or self.state != "closed":
            return
        window = self._calls
        window.add(calls=1, marked=int(failed))
        calls, failures = window.calls, window.marked
        settings = self.settings
        if calls >= settings.min_calls and failures >= settings.failure_rate * calls:
            self._open(f"{failures} of {calls} calls failed in {settings.window:g}s")

    def _open(self, why: str) -> None:
        self.state, self._why = "open", why
        self.open_until = time.monotonic() + self.settings.open_for
        self._calls.clear()


class _BulkheadState:
    def __init__(self, settings: Bulkhead, target: str) -> None:
        self.settings = settings
        self.target = target
        self.waiting = 0
        self._turns = asyncio.Semaphore(settings.max_concurrent)

    async def enter(self, remaining: float | None) -> None:
        """Take a place among the calls in flight, waited for within ``remaining`` seconds;
        ``leave()`` gives it back."""
        if self._turns.locked():
            if self.waiting >= self.settings.max_queue:
                raise ServiceUnavailable(
                    f"bulkhead for {self.target} is full: {self.settings.max_concurrent} "
                    f"call(s) in flight and {self.waiting} waiting",
                    id=CLIENT_ID,
                )
            self.waiting += 1
            try:
                async with asyncio.timeout(remaining):
                    await self._turns.acquire()
            except TimeoutError:
                raise Timeout(
                    f"deadline exceeded waiting in the bulkhead for {self.target}", id=CLIENT_ID
                ) from None
            finally:
                self.waiting -= 1
        else:
            await self._turns.acquire()

    def leave(self) -> None:
        self._turns.release()


class _BudgetState:
    def __init__(self, settings: RetryBudget) -> None:
        self.settings = settings
        self._window = _Window(settings.window)

    def called(self) -> None:
        self._window.add(calls=1)

    def withdraw(self) -> bool:
        """Take one retry from the budget; ``False`` when it is spent."""
        window = self._window
        window.trim(time.monotonic())
        settings = self.settings
        allowed = settings.min_per_second * settings.window + settings.ratio * window.calls
        if window.marked + 1 > allowed:
            return False
        self._window.add(marked=1)
        return True


@dataclass(frozen=True, slots=True)
class _Target:
    """What one (service, endpoint) is held to, with the state it shares with its scope."""

    policy: Policy
    breaker: CircuitBreaker | None
    bulkhead: _BulkheadState | None
    budget: _BudgetState | None


class Guards:
    """A client's live state of its ``Policies``: breakers, bulkheads and budgets by scope."""

    def __init__(self, policies: Policies) -> None:
        self.policies = policies
        self.on = bool(policies)
        """Whether any policy is set: with none, calls skip the guards altogether."""
        self._targets: dict[tuple[str, str], _Target] = {}
        self._states: dict[tuple[str, str], Any] = {}

    def target(self, service: str, endpoint: str) -> _Target:
        key = (service, endpoint)
        found = self._targets.get(key)
        if found is None:
            if len(self._targets) > _MAX_TARGETS:
                self._targets.clear()  # only the merge is forgotten; the states stay
            found = self._targets[key] = self._resolve(service, endpoint)
        return found

    def _resolve(self, service: str, endpoint: str) -> _Target:
        layers = self.policies.layers(service, endpoint)
        merged = Policy()
        scopes: dict[str, str] = {}
        for scope, policy in reversed(layers):  # the widest first, narrower ones override
            for field in fields(Policy):
                if getattr(policy, field.name) is not None:
                    merged = replace(merged, **{field.name: getattr(policy, field.name)})
                    scopes[field.name] = scope
        return _Target(
            merged,
            self._state("breaker", scopes, merged.breaker, CircuitBreaker),
            self._state("bulkhead", scopes, merged.bulkhead, _BulkheadState),
            self._state("retry_budget", scopes, merged.retry_budget, None),
        )

    def _state(self, name: str, scopes: dict[str, str], settings: Any, kind: Any) -> Any:
        if settings is None:
            return None
        key = (name, scopes[name])
        state = self._states.get(key)
        if state is None or state.settings is not settings:
            state = _BudgetState(settings) if kind is None else kind(settings, scopes[name])
            self._states[key] = state
        return state

    async def run(self, call: ClientCall, next: ClientNext) -> Any:
        """``next(call)`` through the target's breaker and bulkhead, then its fallback."""
        target = self.target(call.service, call.endpoint)
        try:
            return await _guarded(target, call, next)
        except MicroError as exc:
            fallback = target.policy.fallback
            if fallback is None or exc.code not in RETRYABLE_STATUSES:
                raise
            reply = fallback(call, exc)
            return await reply if inspect.isawaitable(reply) else reply


async def _guarded(target: _Target, call: ClientCall, next: ClientNext) -> Any:
    breaker, bulkhead = target.breaker, target.bulkhead
    probe = breaker.admit() if breaker is not None else None
    failed: bool | None = None
    try:
        if bulkhead is not None:
            await bulkhead.enter(call.context.remaining())
        try:
            reply = await next(call)
        except MicroError as exc:
            failed = counts_as_failure(exc)
            raise
        finally:
            if bulkhead is not None:
                bulkhead.leave()
        failed = False
        return reply
    finally:
        if breaker is not None:
            breaker.record(probe, failed)


def counts_as_failure(error: MicroError) -> bool:
    """Whether an error counts against the target: a 5xx (no node, no connection, the node's
    own 502/503/504, a handler's 500) or a timeout; a 4xx shows it up and the request wrong."""
    return error.code >= 500 or isinstance(error, Timeout)
