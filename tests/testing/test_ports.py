"""``free_port``: a port for a server that binds a moment later, so one the kernel will not hand
to somebody else in between (an outgoing connection's local end, another ``bind`` to port 0)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from asgi_micro.testing import _unclaimed_ports, free_port, listening_socket


def ephemeral_range() -> tuple[int, int]:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(low), int(high)


@pytest.mark.skipif(not Path("/proc/sys/net/ipv4").exists(), reason="Linux only")
def test_a_port_is_outside_the_ephemeral_range_and_free() -> None:
    low, high = ephemeral_range()
    ports = {free_port() for _ in range(50)}
    assert all(port >= 20000 and not low <= port <= high for port in ports)
    assert len(ports) > 40  # drawn at random, so two runs of the suite do not draw alike
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_someone_listens_on_is_never_given(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setattr("asgi_micro.testing._unclaimed_ports", lambda: (port, port))
        given = free_port()  # the only candidate is taken: the kernel chooses instead
    assert given != port


@pytest.mark.parametrize(
    ("kernel", "span"),
    [
        ("32768\t60999\n", (20000, 32767)),  # Linux's default
        ("1024 40000", (40001, 65535)),
        ("20500 65000", None),  # nothing wide enough is left
        ("nonsense", None),
    ],
)
def test_the_span_is_the_widest_the_kernel_leaves(
    tmp_path: Path, kernel: str, span: tuple[int, int] | None
) -> None:
    path = tmp_path / "ip_local_port_range"
    path.write_text(kernel)
    assert _unclaimed_ports(str(path)) == span


def test_without_the_kernel_s_range_the_kernel_chooses(tmp_path: Path) -> None:
    assert _unclaimed_ports(str(tmp_path / "missing")) is None


def test_a_listening_socket_holds_its_port_until_closed() -> None:
    with listening_socket() as held:
        port = held.getsockname()[1]
        with pytest.raises(OSError):
            listening_socket("127.0.0.1", port)
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # waits in the backlog for a server to accept it
    with listening_socket("127.0.0.1", port):  # free again once closed
        pass


def test_a_socket_bound_only_listens_once_the_server_says() -> None:
    with listening_socket(listen=False) as bound:
        port = bound.getsockname()[1]
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2)
        bound.listen()
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
