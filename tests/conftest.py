"""Every test sees only its own nodes.

mDNS in tests runs on loopback only, and each test in a domain of its own (``mdns://?domain=``,
a DNS-SD service type no other test, test run or user's service shares): a greeter running in
another shell, or the same suite running beside this one, is invisible to it. Subprocesses the
test starts inherit the domain through ``MICRO_REGISTRY``. Services under test keep their
records in memory unless a test chooses a store.

The suite tests the wire: calls between services in the test's process go over loopback
(``MICRO_LOCAL_CALLS=false``), as they would between processes. The tests of in-process calls
(``tests/test_local.py``, ``asgi_micro.testing.Cluster``'s) turn them on for themselves.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.etcd import etcd_server
from tests.helpers import new_mdns_domain

# The fixtures a user's suite gets from asgi-micro (tests/testing uses them as a user would).
pytest_plugins = ["asgi_micro.testing.plugin"]

os.environ.pop("MICRO_REGISTRY", None)
os.environ["MICRO_STORE"] = "memory://"
os.environ["MICRO_DATABASE"] = "sqlite://"
os.environ["MICRO_LOCAL_CALLS"] = "false"


@pytest.fixture(autouse=True)
def own_mdns_domain(monkeypatch: pytest.MonkeyPatch) -> str:
    domain = new_mdns_domain()
    monkeypatch.setenv("MICRO_REGISTRY", f"mdns://?domain={domain}")
    return domain


@pytest.fixture(scope="session")
def etcd_url() -> Iterator[str]:
    """One etcd for the session (``tests/etcd.py``); tests keep to key prefixes of their own."""
    with etcd_server() as url:
        yield url
