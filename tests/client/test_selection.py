"""Strategies, filters and outlier ejection, without sockets."""

from __future__ import annotations

import collections
import time

import pytest

from asgi_micro.client.outliers import OutlierDetector
from asgi_micro.client.selector import (
    LeastOutstanding,
    PowerOfTwoChoices,
    Random,
    RoundRobin,
    Strategy,
    candidates,
    strategy_named,
)
from asgi_micro.registry import Node
from asgi_micro.registry import Service as ServiceRecord

NODES = [Node(id=f"n{i}", address=f"127.0.0.1:{9000 + i}") for i in range(3)]


@pytest.mark.parametrize(
    "strategy", [Random(), RoundRobin(), LeastOutstanding(), PowerOfTwoChoices()]
)
def test_every_strategy_spreads_over_every_node(strategy: Strategy) -> None:
    load: collections.Counter[str] = collections.Counter()
    picks: collections.Counter[str] = collections.Counter()
    for _ in range(3000):
        node = strategy.pick("svc", NODES, lambda n: load[n.id])
        picks[node.id] += 1
    assert set(picks) == {"n0", "n1", "n2"}
    assert min(picks.values()) > 800


def test_round_robin_takes_turns() -> None:
    strategy = RoundRobin()
    picks = [strategy.pick("svc", NODES, lambda n: 0).id for _ in range(6)]
    assert picks[:3] == picks[3:]
    assert sorted(picks[:3]) == ["n0", "n1", "n2"]


def test_load_aware_strategies_avoid_busy_nodes() -> None:
    busy = {"n0": 10, "n1": 0, "n2": 10}
    assert {LeastOutstanding().pick("s", NODES, lambda n: busy[n.id]).id for _ in range(50)} == {
        "n1"
    }
    p2c = collections.Counter(
        PowerOfTwoChoices().pick("s", NODES, lambda n: busy[n.id]).id for _ in range(600)
    )
    assert p2c["n1"] > 300  # chosen whenever it is one of the two drawn: 2/3 of the time


def test_strategy_names() -> None:
    assert isinstance(strategy_named("round_robin"), RoundRobin)
    with pytest.raises(ValueError, match="unknown strategy 'fastest'"):
        strategy_named("fastest")


def test_filters_by_version_and_labels() -> None:
    records = [
        ServiceRecord(
            name="s",
            version="1",
            nodes=[Node("a", "h:1", {"zone": "x"}), Node("b", "h:2", {"zone": "y"})],
        ),
        ServiceRecord(name="s", version="2", nodes=[Node("c", "h:3", {"zone": "x"})]),
    ]
    assert [n.id for n in candidates(records)] == ["a", "b", "c"]
    assert [n.id for n in candidates(records, version="1")] == ["a", "b"]
    assert [n.id for n in candidates(records, labels={"zone": "x"})] == ["a", "c"]
    assert candidates(records, version="2", labels={"zone": "y"}) == []


def test_ejection_after_consecutive_failures_then_probation() -> None:
    detector = OutlierDetector(consecutive_failures=3, base_ejection=0.05, max_ejection=0.2)
    node = NODES[0]
    detector.failed(node)
    detector.failed(node)
    assert not detector.ejected(node)
    detector.failed(node)
    assert detector.ejected(node)
    assert detector.eligible(NODES) == NODES[1:]


def test_probation_failure_ejects_again_for_longer() -> None:
    detector = OutlierDetector(consecutive_failures=2, base_ejection=1.0, max_ejection=4.0)
    node = NODES[0]
    detector.failed(node)
    detector.failed(node)
    record = detector._nodes[node.id]
    record.ejected_until = 0  # the ejection is over: probation
    assert not detector.ejected(node)
    detector.failed(node)  # a single failure on probation is enough
    assert detector.ejected(node)
    assert record.ejected_until - time.monotonic() > 1.5  # 2 s this time instead of 1 s
    detector.succeeded(node)
    assert not detector.ejected(node)
    assert node.id not in detector._nodes


def test_all_ejected_means_try_them_anyway() -> None:
    detector = OutlierDetector(consecutive_failures=1)
    for node in NODES:
        detector.failed(node)
    assert detector.eligible(NODES) == NODES


def test_bad_ejection_settings() -> None:
    with pytest.raises(ValueError, match="consecutive_failures"):
        OutlierDetector(consecutive_failures=0)


def test_a_silent_node_is_stalled_until_it_answers() -> None:
    detector = OutlierDetector(stall_after=0.05)
    silent, busy = NODES[0], NODES[1]
    for _ in range(5):  # a few quick answers: a round trip of about nothing
        detector.answered(busy, detector.sent(busy))
        detector.answered(silent, detector.sent(silent))
    detector.sent(silent)
    sent_at = detector.sent(busy)
    assert detector.outstanding(silent) == 1
    assert not detector.stalled(silent)  # outstanding, but not for long yet
    time.sleep(0.06)
    detector.answered(busy, sent_at)
    detector.sent(busy)  # outstanding too, but it answered a moment ago
    assert detector.stalled(silent)
    assert not detector.stalled(busy)
    assert detector.eligible(NODES) == NODES[1:]
    detector.abandoned(silent)  # the call gave up: nothing outstanding, nothing to wait for
    assert not detector.stalled(silent)
    assert detector.outstanding(silent) == 0


def test_a_slow_node_is_given_the_time_it_usually_takes() -> None:
    detector = OutlierDetector(stall_after=0.01, stall_factor=2.0)
    node = NODES[0]
    detector._activity.clear()
    sent_at = detector.sent(node)
    detector._activity[node.id].round_trip = None
    time.sleep(0.02)
    detector.answered(node, sent_at)  # one answer after 20 ms: its bound is 20 + 4 * 10 ms
    detector.sent(node)
    time.sleep(0.03)
    assert not detector.stalled(node)  # 30 ms without an answer: within twice its bound
    assert detector.stalled(node, now=time.monotonic() + 0.2)
    bound = detector._activity[node.id].round_trip.bound  # type: ignore[union-attr]
    assert detector.silence_allowed(node.id) == pytest.approx(2.0 * bound)
    assert detector.silence_allowed("never-called") == 0.01  # nothing known: stall_after


def test_attempt_timeouts_follow_the_endpoint_and_stay_within_the_deadline() -> None:
    detector = OutlierDetector(stall_after=0.1, attempt_factor=4.0)
    node, key = NODES[0], ("svc", "Svc.Get")
    assert detector.attempt_timeout(key, 5.0) == 5.0  # nothing observed yet: the whole time
    assert detector.attempt_timeout(key, None) is None
    for _ in range(3):
        detector.answered(node, detector.sent(node) - 0.05, key)  # 50 ms each
    budget = detector.attempt_timeout(key, 5.0)
    assert budget is not None
    # Four times the bound: srtt 50 ms, rttvar 25 ms decayed twice by 3/4.
    assert budget == pytest.approx(4 * (0.05 + 4 * 0.025 * 0.75**2), rel=0.05)
    assert detector.attempt_timeout(key, 0.3) == 0.3  # never past the deadline
    assert detector.attempt_timeout(key, None) == budget


def test_bad_stall_settings() -> None:
    with pytest.raises(ValueError, match="stall_after"):
        OutlierDetector(stall_after=0)
