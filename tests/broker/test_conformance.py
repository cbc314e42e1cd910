"""The broker conformance suite (``asgi_micro.testing.broker``) on every broker: one class
per backend, whose namespace comes from ``backend_<name>.brokers()``."""

from __future__ import annotations

import pytest

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


def test_every_broker_runs_this_suite() -> None:
    suites = {
        cls.__name__ for cls in BrokerConformance.__subclasses__() if cls.__module__ == __name__
    }
    assert suites == {"TestMemory", "TestHTTP", "TestNATS", "TestRedis", "TestAMQP"}
