"""Whether mDNS can work on an interface, said before zeroconf opens, and what to do instead.

zeroconf skips an interface whose socket cannot join the mDNS group (it logs at INFO and goes
on), so a registry bound to a wrong address or to an interface with multicast off would open
without error and then find nothing. ``join`` asks first: the address must belong to an
interface of this machine, the interface must have multicast on (loopback excepted: Linux
delivers multicast on ``lo`` although it lacks the flag), and a socket must be able to join
``224.0.0.251`` there. What fails is a ``ServiceUnavailable`` naming the interface and the
registries that need no multicast.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from pathlib import Path

import ifaddr

from ..errors import ServiceUnavailable

__all__ = ["ALTERNATIVE", "GROUP", "advice", "join"]

GROUP = "224.0.0.251"
"""The mDNS IPv4 multicast group (RFC 6762)."""
ALTERNATIVE = (
    "Where multicast is blocked or off (a firewall on UDP 5353, a VPN, a container or cloud "
    "network), run a registry server and set MICRO_REGISTRY=etcd://host:2379 or "
    "MICRO_REGISTRY=nats://host:4222 in every service."
)
_ALL = "0.0.0.0"
_IFF_MULTICAST = 0x1000  # <linux/if.h>


def join(interfaces: list[str]) -> list[str]:
    """The addresses of ``interfaces`` where the mDNS group can be joined; ``["0.0.0.0"]``
    means every IPv4 address of this machine, and needs one of them to work. A listed address
    that cannot join raises ``ServiceUnavailable``."""
    names = _interface_names()
    if interfaces == [_ALL]:
        joined = [address for address in names if _problem(address, names) is None]
        if not joined:
            raise ServiceUnavailable(
                "mDNS cannot join the multicast group on any interface of this machine. "
                + ALTERNATIVE
            )
        return joined
    for address in interfaces:
        problem = _problem(address, names)
        if problem is not None:
            interface = f"{address} ({names[address]})" if address in names else address
            raise ServiceUnavailable(
                f"mDNS cannot join the multicast group {GROUP} on interface {interface}: "
                f"{problem}. {ALTERNATIVE}"
            )
    return list(interfaces)


def advice(domain: str, interfaces: list[str] | None) -> str:
    """Why an mDNS lookup may find nothing: what a registry on ``interfaces`` in ``domain``
    can see, and the registries that see across networks."""
    if not interfaces or all(ipaddress.IPv4Address(i).is_loopback for i in interfaces):
        reach = (
            "this registry listens on loopback only, so it sees services on this machine "
            "alone (mdns://0.0.0.0 listens on every interface)"
        )
    else:
        reach = "mDNS sees services on the same network link only"
    return f"{reach}, and in its own mDNS domain ({domain!r}) only. {ALTERNATIVE}"


def _problem(address: str, names: dict[str, str]) -> str | None:
    """Why ``address`` cannot carry mDNS, or ``None`` when it can."""
    name = names.get(address)
    if name is None:
        return "no interface of this machine has that address"
    if not ipaddress.IPv4Address(address).is_loopback and _multicast_off(name):
        return f"multicast is off on {name} (ip link set {name} multicast on)"
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        membership = socket.inet_aton(GROUP) + socket.inet_aton(address)
        probe.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
    except OSError as exc:
        return f"joining failed: {exc.strerror or exc}"
    finally:
        probe.close()
    return None


def _interface_names() -> dict[str, str]:
    """Each IPv4 address of this machine and the name of its interface."""
    return {
        str(ip.ip): adapter.nice_name
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
        if isinstance(ip.ip, str)
    }


def _multicast_off(name: str) -> bool:
    """Whether the interface lacks the MULTICAST flag; only Linux says, through sysfs."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        flags = int(Path(f"/sys/class/net/{name}/flags").read_text(), 16)
    except (OSError, ValueError):
        return False
    return not flags & _IFF_MULTICAST
