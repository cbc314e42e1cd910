"""A network of hosts made of Linux network namespaces, as separate machines on one LAN.

Each host is a namespace with loopback and one interface, ``eth0``, addressed in 198.18.0.0/24
(RFC 2544's benchmarking range). The LAN is a bridge in a namespace of its own, the switch,
with a veth pair from each host into it: no address, bridge or route is ever added to the root
namespace, where the test runs, so nothing the hosts do reaches the machine's own network.
Names are unique per run (``am`` and 6 hex digits), so a run that crashed leaves nothing the
next one trips over, and ``close`` removes everything even after a failure. Host names
resolve through ``/etc/netns/<namespace>/hosts``, which ``ip netns exec`` puts over
``/etc/hosts``.

``Host.cut()`` sets its link down, as a pulled cable would: packets to and from it are
dropped, connections hang rather than being refused; ``restore()`` plugs it back in.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import IN_CI

__all__ = ["SUBNET", "Host", "Network", "network", "require_namespaces"]

SUBNET = ipaddress.IPv4Network("198.18.0.0/24")
_FIRST_HOST = 10  # 198.18.0.10 and up; the switch has no address
_NETNS_ETC = Path("/etc/netns")


def require_namespaces() -> None:
    """Skip unless this process may create network namespaces (root, with ``ip``); under
    ``CI=true`` that is a failure."""
    if os.geteuid() != 0:
        message = "network namespaces need root"
    elif shutil.which("ip") is None:
        message = "network namespaces need iproute2's ip"
    else:
        return
    if IN_CI:
        pytest.fail(f"{message}; run the tests as root with iproute2 installed", pytrace=False)
    pytest.skip(message)


def ip(*args: str) -> str:
    """Run ``ip ARGS``; its output, or an error that says what failed."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True)
class Host:
    """One machine: a namespace whose ``eth0`` has ``address``, known to its peers as
    ``name``."""

    name: str
    namespace: str
    address: str
    port_in_switch: str

    def run(self, *command: str) -> list[str]:
        """``command`` as it would run on this host."""
        return ["ip", "netns", "exec", self.namespace, *command]

    def cut(self) -> None:
        ip("-n", self.namespace, "link", "set", "eth0", "down")

    def restore(self) -> None:
        ip("-n", self.namespace, "link", "set", "eth0", "up")


class Network:
    """Hosts on one switch; ``add(name)`` plugs in another."""

    def __init__(self) -> None:
        self.prefix = f"am{secrets.token_hex(3)}"
        self.switch = f"{self.prefix}-switch"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []

    def open(self) -> None:
        self._namespace(self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        ip("-n", self.switch, "link", "set", "br0", "up")

    def add(self, name: str) -> Host:
        index = len(self.hosts)
        host = Host(
            name=name,
            namespace=f"{self.prefix}-{name}",
            address=str(SUBNET[_FIRST_HOST + index]),
            port_in_switch=f"p{index}",
        )
        self._namespace(host.namespace)
        ip("-n", self.switch, "link", "add", host.port_in_switch, "type", "veth",
           "peer", "name", "eth0", "netns", host.namespace)  # fmt: skip
        ip("-n", self.switch, "link", "set", host.port_in_switch, "master", "br0", "up")
        ip("-n", host.namespace, "addr", "add", f"{host.address}/{SUBNET.prefixlen}", "dev", "eth0")
        ip("-n", host.namespace, "link", "set", "eth0", "up")
        self.hosts[name] = host
        self._write_hosts_files()
        return host

    def close(self) -> None:
        """Stop whatever still runs on the hosts, then remove every namespace and file."""
        for namespace in reversed(self._namespaces):
            with contextlib.suppress(RuntimeError):
                for pid in ip("netns", "pids", namespace).split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
            with contextlib.suppress(RuntimeError):
                ip("netns", "delete", namespace)
            shutil.rmtree(_NETNS_ETC / namespace, ignore_errors=True)
        self._namespaces.clear()

    def _namespace(self, name: str) -> None:
        self._namespaces.append(name)  # before it exists: close() removes a half-made one too
        ip("netns", "add", name)
        ip("-n", name, "link", "set", "lo", "up")

    def _write_hosts_files(self) -> None:
        """Every host knows every other by name; written in place, so that processes already
        running (their /etc/hosts is a bind mount of the file) see hosts added later."""
        lines = ["127.0.0.1\tlocalhost"]
        lines += [f"{host.address}\t{host.name}" for host in self.hosts.values()]
        for host in self.hosts.values():
            directory = _NETNS_ETC / host.namespace
            directory.mkdir(parents=True, exist_ok=True)
            with open(directory / "hosts", "w") as hosts:
                hosts.write("\n".join(lines) + "\n")


@contextlib.contextmanager
def network() -> Iterator[Network]:
    require_namespaces()
    net = Network()
    try:
        net.open()
        yield net
    finally:
        net.close()
