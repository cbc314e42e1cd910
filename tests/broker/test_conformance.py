"""The broker conformance suite (``asgi_micro.testing.broker``) on every broker: one class
per backend, whose namespace comes from ``backend_<name>.brokers()``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asgi_micro.broker.base import event_time
from asgi_micro.testing.broker import BrokerConformance
from tests.broker import backend_amqp, backend_http, backend_memory, backend_nats, backend_redis


class TestMemory(BrokerConformance):
    brokers = staticmethod(backend_memory.brokers)


class TestHTTP(BrokerConformance):
    brokers = staticmethod(backend_http.brokers)


class TestNATS(BrokerConformance):
    brokers = staticmethod(backend_nats.brokers)


class TestRedis(BrokerConformance):
    brokers = staticmethod(backend_redis.brokers)


class TestAMQP(BrokerConformance):
    brokers = staticmethod(backend_amqp.brokers)


def test_topics_are_checked() -> None:
    from asgi_micro.broker.base import check_topic

    check_topic("user.created")
    check_topic("a-b.c_d.e1")
    for bad in ["", "user..created", "user.*", "user created", "ü.x", ".x", "x."]:
        with pytest.raises(ValueError, match="topic"):
            check_topic(bad)


@given(st.lists(st.floats(min_value=0, max_value=253402300798.0), min_size=1, max_size=4))
def test_ce_time_is_what_datetime_writes_to_the_millisecond(moments: list[float]) -> None:
    for now in moments:  # (one after the other: the cached second must follow)
        expected = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")
        assert event_time(now) == expected.replace("+00:00", "Z")


def test_ce_time_is_now_by_default() -> None:
    stamp = datetime.fromisoformat(event_time())
    assert abs(stamp - datetime.now(UTC)) < timedelta(seconds=1)
    assert event_time(59.9994) == "1970-01-01T00:00:59.999Z"
    assert event_time(59.9999996) == "1970-01-01T00:01:00.000Z"  # (rounded to the microsecond)
    assert event_time(60.0) == "1970-01-01T00:01:00.000Z"
    assert event_time(59.0) == "1970-01-01T00:00:59.000Z"  # back to an earlier second


def test_every_broker_runs_this_suite() -> None:
    suites = {
        cls.__name__ for cls in BrokerConformance.__subclasses__() if cls.__module__ == __name__
    }
    assert suites == {"TestMemory", "TestHTTP", "TestNATS", "TestRedis", "TestAMQP"}
