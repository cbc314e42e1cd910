"""Fixtures of the multi-host tests: a fresh ``Network`` per test, torn down after it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.multihost.network import Network, network


@pytest.fixture
def net() -> Iterator[Network]:
    with network() as hosts:
        yield hosts
