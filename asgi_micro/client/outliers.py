"""Outlier ejection: a node that keeps failing, or stops answering, is left out of selection.

Failures. After ``consecutive_failures`` failures of the node itself in a row (it refused or
dropped connections, or did not answer before the call's time ran out) a node is ejected for
``base_ejection`` seconds, doubled at each ejection in a row up to ``max_ejection``. When the
time is up it is eligible again, on probation: one more failure ejects it again at once, one
answer clears its record.

Answers. A 502, 503 or 504 that the node gives as its own (the error's id is the service's name,
the server's, or none: the node is overloaded, not ready, or a proxy in front of it cannot reach
it) counts as a failure of the node, so that a node that keeps answering 503 is ejected while
the others take its calls. Any other answer says the node is up: a 4xx, a 500 (a handler's bug
is the same on every node, and ejecting them all helps no one) and a 5xx the node relays from
elsewhere (its own client's, or another service's: its dependency failed, not the node).

Stalls. A node that is frozen (a stopped process, a full disk, a stuck event loop) still accepts
connections: only its silence tells. The detector keeps, per node, the calls outstanding, the
time of its last answer and a smoothed round-trip time (RFC 6298: ``srtt + 4 * rttvar``, the
``bound`` a healthy answer rarely exceeds). A node that has had a call outstanding for longer
than ``stall_after`` (or ``stall_factor`` times its bound, if that is longer) without answering
anything meanwhile is *stalled*: no new call goes to it until it answers again, whatever the
strategy. Calls already sent to it wait for their own time to run out, which counts as a
failure and so ejects it; an idempotent call is given a shorter time per attempt (see
``attempt_timeout``) and is retried on another node.

If every candidate is ejected or stalled the selector ignores both rather than failing fast
forever, as Envoy's panic threshold does.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from ..errors import SERVER_ID, MicroError
from ..registry import Node

__all__ = ["OutlierDetector", "RoundTrip", "unavailable_answer"]

_UNAVAILABLE = frozenset({502, 503, 504})

_MAX_TRACKED = 1024


@dataclass(slots=True)
class RoundTrip:
    """A smoothed round-trip time and its variation (RFC 6298), in seconds."""

    srtt: float = 0.0
    rttvar: float = 0.0
    samples: int = 0

    def observe(self, seconds: float) -> None:
        if self.samples == 0:
            self.srtt, self.rttvar = seconds, seconds / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - seconds)
            self.srtt = 0.875 * self.srtt + 0.125 * seconds
        self.samples += 1

    @property
    def bound(self) -> float:
        """The time within which nearly every answer comes: ``srtt + 4 * rttvar``."""
        return self.srtt + 4 * self.rttvar


@dataclass(slots=True)
class _Record:
    failures: int = 0
    ejections: int = 0  # in a row; sets the length of the next one
    ejected_until: float = 0.0


@dataclass(slots=True)
class _Activity:
    outstanding: int = 0
    waiting_since: float = 0.0  # when ``outstanding`` last went from 0 to 1
    answered_at: float = 0.0
    round_trip: RoundTrip | None = None


class OutlierDetector:
    def __init__(
        self,
        *,
        consecutive_failures: int = 3,
        base_ejection: float = 1.0,
        max_ejection: float = 10.0,
        stall_after: float = 0.2,
        stall_factor: float = 2.0,
        attempt_factor: float = 4.0,
    ) -> None:
        if consecutive_failures < 1 or base_ejection <= 0 or max_ejection < base_ejection:
            raise ValueError("need consecutive_failures >= 1 and 0 < base_ejection <= max_ejection")
        if stall_after <= 0 or stall_factor < 1 or attempt_factor < 1:
            raise ValueError("need stall_after > 0, stall_factor >= 1 and attempt_factor >= 1")
        self.consecutive_failures = consecutive_failures
        self.base_ejection = base_ejection
        self.max_ejection = max_ejection
        self.stall_after = stall_after
        self.stall_factor = stall_factor
        self.attempt_factor = attempt_factor
        self._nodes: dict[str, _Record] = {}
        self._activity: dict[str, _Activity] = {}
        self._endpoints: dict[Hashable, RoundTrip] = {}

    # -- failures and ejection ----------------------------------------------------------------

    def failed(self, node: Node) -> None:
        if len(self._nodes) > _MAX_TRACKED:
            self._prune()
        record = self._nodes.setdefault(node.id, _Record())
        record.failures += 1
        on_probation = record.ejections > 0
        if record.failures >= self.consecutive_failures or on_probation:
            duration = min(self.base_ejection * 2**record.ejections, self.max_ejection)
            record.ejected_until = time.monotonic() + duration
            record.ejections += 1
            record.failures = 0

    def _prune(self) -> None:
        """Forget nodes long past their ejection: most are gone from the registry."""
        horizon = time.monotonic() - self.max_ejection
        for node_id, record in list(self._nodes.items()):
            if record.ejected_until < horizon:
                del self._nodes[node_id]

    def succeeded(self, node: Node) -> None:
        if node.id in self._nodes:
            del self._nodes[node.id]

    def ejected(self, node: Node, now: float | None = None) -> bool:
        record = self._nodes.get(node.id)
        if record is None:
            return False
        return (time.monotonic() if now is None else now) < record.ejected_until

    def eligible(self, nodes: Sequence[Node]) -> Sequence[Node]:
        """``nodes`` without the ejected and stalled ones; all of them when none is left."""
        if not self._nodes and not self._activity:
            return nodes
        now = time.monotonic()
        healthy = [node for node in nodes if self.available(node, now)]
        return healthy or nodes

    # -- calls outstanding, answers and stalls -----------------------------------------------

    def sent(self, node: Node) -> float:
        """A call went to ``node``; returns when, for ``answered``."""
        now = time.monotonic()
        activity = self._activity.get(node.id)
        if activity is None:
            if len(self._activity) > _MAX_TRACKED:
                self._forget_idle()
            activity = self._activity[node.id] = _Activity(answered_at=now)
        if activity.outstanding == 0:
            activity.waiting_since = now
        activity.outstanding += 1
        return now

    def answered(self, node: Node, sent_at: float, endpoint: Hashable = None) -> None:
        """``node`` answered the call sent at ``sent_at`` (with a reply or an error of its own):
        it is up, and the time it took is a sample of its round trip and ``endpoint``'s."""
        now = time.monotonic()
        activity = self._activity[node.id]
        activity.outstanding -= 1
        activity.answered_at = now
        if activity.round_trip is None:
            activity.round_trip = RoundTrip()
        activity.round_trip.observe(now - sent_at)
        if endpoint is not None:
            round_trip = self._endpoints.get(endpoint)
            if round_trip is None:
                if len(self._endpoints) > _MAX_TRACKED:
                    self._endpoints.clear()
                round_trip = self._endpoints[endpoint] = RoundTrip()
            round_trip.observe(now - sent_at)

    def abandoned(self, node: Node) -> None:
        """The call sent to ``node`` ended without an answer (failed, timed out, cancelled)."""
        self._activity[node.id].outstanding -= 1

    def outstanding(self, node: Node) -> int:
        activity = self._activity.get(node.id)
        return 0 if activity is None else activity.outstanding

    def stalled(self, node: Node, now: float | None = None) -> bool:
        """Whether ``node`` has had a call outstanding too long with no answer meanwhile."""
        activity = self._activity.get(node.id)
        if activity is None or activity.outstanding == 0:
            return False
        silent = (time.monotonic() if now is None else now) - max(
            activity.waiting_since, activity.answered_at
        )
        return silent > self._silence_allowed(activity)

    def silence_allowed(self, node_id: str) -> float:
        """How long the node may leave a call unanswered, with no other answer meanwhile,
        before it counts as stalled: ``stall_after``, or ``stall_factor`` times the bound of
        its round trip if that is longer (a node known to be slow is given longer)."""
        activity = self._activity.get(node_id)
        return self.stall_after if activity is None else self._silence_allowed(activity)

    def _silence_allowed(self, activity: _Activity) -> float:
        round_trip = activity.round_trip
        if round_trip is None:
            return self.stall_after
        return max(self.stall_after, self.stall_factor * round_trip.bound)

    def available(self, node: Node, now: float) -> bool:
        """Neither ejected nor stalled at ``now``."""
        return not self.ejected(node, now) and not self.stalled(node, now)

    def attempt_timeout(self, endpoint: Hashable, remaining: float | None) -> float | None:
        """The time an attempt at ``endpoint`` that may be retried is given: ``attempt_factor``
        times the bound of its round trip (never less than ``stall_after``), within
        ``remaining``; ``remaining`` itself until the endpoint has answered a few times."""
        round_trip = self._endpoints.get(endpoint)
        if round_trip is None or round_trip.samples < 3:
            return remaining
        budget = max(self.stall_after, self.attempt_factor * round_trip.bound)
        return budget if remaining is None or budget < remaining else remaining

    def _forget_idle(self) -> None:
        for node_id, activity in list(self._activity.items()):
            if activity.outstanding == 0:
                del self._activity[node_id]


def unavailable_answer(error: MicroError, service: str) -> bool:
    """Whether ``error``, answered by a node of ``service``, says the node itself cannot serve
    (its own 502, 503 or 504) rather than that a handler or a dependency failed."""
    return error.code in _UNAVAILABLE and error.id in (service, SERVER_ID, "")
