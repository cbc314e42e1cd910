"""The brokers the conformance suite runs against: one module ``backend_<name>.py`` each, whose
``brokers()`` is an async context manager yielding a factory of fresh, unstarted brokers that
share one namespace of their own (so that two runs of the suite never see each other's events).
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from asgi_micro.broker import Broker

MakeBroker = Callable[[str], Broker]
"""``make(source)``: a new broker in the test's namespace, publishing as ``source``."""

BACKENDS = sorted(
    path.stem.removeprefix("backend_") for path in Path(__file__).parent.glob("backend_*.py")
)


@pytest.fixture(params=BACKENDS)
async def make_broker(request: pytest.FixtureRequest) -> AsyncIterator[MakeBroker]:
    module = importlib.import_module(f"tests.broker.backend_{request.param}")
    async with module.brokers() as make:
        yield make
