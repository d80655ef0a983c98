"""Capture without root: the order sockets are set up in, errors, draining.

A fake socket records every call, so the promise "filter attached before
bind, so no unfiltered packet ever queues" is checked here on any machine;
tests/e2e/test_intake.py checks the real thing in a namespace.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

import pytest

from spa.errors import SpaError
from spa.intake import capture as capture_module
from spa.intake.bpf import SO_ATTACH_FILTER, PortRange, Wanted
from spa.intake.capture import (
    PACKET_IGNORE_OUTGOING,
    SO_LOCK_FILTER,
    SO_RCVBUFFORCE,
    SOL_PACKET,
    Capture,
    CaptureError,
)

WANTED = Wanted(icmp_echo=True, udp=(PortRange(62201, 62201),))


class FakeSocket:
    """Records calls; ``incoming`` is what recv returns, then an error."""

    def __init__(self, log: list[Any], *, no_force: bool = False) -> None:
        self.log = log
        self.no_force = no_force
        self.incoming: list[bytes] = []
        self.then: OSError = BlockingIOError(errno.EAGAIN, "again")
        self.closed = False

    def setsockopt(self, level: int, option: int, value: Any) -> None:
        if (level, option) == (socket.SOL_SOCKET, SO_RCVBUFFORCE) and self.no_force:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        self.log.append(("setsockopt", level, option))

    def setblocking(self, flag: bool) -> None:
        self.log.append(("setblocking", flag))

    def fileno(self) -> int:
        return 99

    def recv(self, size: int) -> bytes:
        if self.incoming:
            return self.incoming.pop(0)
        raise self.then

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    state: dict[str, Any] = {"log": [], "sockets": [], "no_force": False, "indexes": {"eth0": 2, "wg0": 5}}

    def make_socket(family: int, kind: int, protocol: int) -> FakeSocket:
        state["log"].append(("socket", family, kind, protocol))
        sock = FakeSocket(state["log"], no_force=state["no_force"])
        state["sockets"].append(sock)
        return sock

    def index(name: str) -> int:
        if name not in state["indexes"]:
            raise OSError(errno.ENODEV, "No such device")
        return int(state["indexes"][name])

    def bind(sock: FakeSocket, index: int, name: str) -> None:
        state["log"].append(("bind", index))

    monkeypatch.setattr(capture_module.socket, "socket", make_socket)
    monkeypatch.setattr(capture_module.socket, "if_nametoindex", index)
    monkeypatch.setattr(capture_module, "_bind", bind)
    return state


def test_filter_is_attached_and_locked_before_bind_and_outgoing_is_ignored(fakes: dict[str, Any]) -> None:
    Capture(WANTED)
    calls = [(entry[0], *entry[1:]) for entry in fakes["log"]]
    assert calls == [
        ("socket", socket.AF_PACKET, socket.SOCK_DGRAM, 0),  # protocol 0: receives nothing yet
        ("setsockopt", SOL_PACKET, PACKET_IGNORE_OUTGOING),
        ("setsockopt", socket.SOL_SOCKET, SO_RCVBUFFORCE),
        ("setsockopt", socket.SOL_SOCKET, SO_ATTACH_FILTER),
        ("setsockopt", socket.SOL_SOCKET, SO_LOCK_FILTER),  # whoever inherits it cannot swap the filter
        ("bind", 0),  # 0: every interface
        ("setblocking", False),
    ]


def test_one_socket_per_named_interface_bound_by_index(fakes: dict[str, Any]) -> None:
    capture = Capture(WANTED, ("eth0", "wg0", "eth0"))
    assert len(capture.sockets()) == 2  # a repeated name would deliver every packet twice
    assert [entry for entry in fakes["log"] if entry[0] == "bind"] == [("bind", 2), ("bind", 5)]


def test_without_cap_net_admin_the_buffer_falls_back_quietly(fakes: dict[str, Any]) -> None:
    fakes["no_force"] = True
    Capture(WANTED)
    assert ("setsockopt", socket.SOL_SOCKET, socket.SO_RCVBUF) in fakes["log"]


def test_a_missing_interface_is_named_and_nothing_is_left_open(fakes: dict[str, Any]) -> None:
    with pytest.raises(CaptureError, match="^cannot capture on 'nosuch0': no such network interface$"):
        Capture(WANTED, ("eth0", "nosuch0"))
    assert fakes["sockets"] and all(sock.closed for sock in fakes["sockets"])


def test_missing_privilege_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*arguments: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(capture_module.socket, "socket", refuse)
    with pytest.raises(CaptureError) as caught:
        Capture(WANTED)
    assert str(caught.value) == "capturing packets needs root or CAP_NET_RAW"
    assert isinstance(caught.value, SpaError)


def test_drain_reads_up_to_limit_without_blocking(fakes: dict[str, Any]) -> None:
    capture = Capture(WANTED)
    [sock] = capture.sockets()
    fake: FakeSocket = fakes["sockets"][0]
    fake.incoming = [bytes([n]) for n in range(10)]
    assert capture.drain(sock, limit=4) == [b"\x00", b"\x01", b"\x02", b"\x03"]
    assert len(capture.drain(sock)) == 6
    assert capture.drain(sock) == []


def test_drain_survives_an_interface_going_down(fakes: dict[str, Any]) -> None:
    capture = Capture(WANTED, ("eth0",))
    [sock] = capture.sockets()
    fake: FakeSocket = fakes["sockets"][0]
    fake.incoming = [b"a"]
    fake.then = OSError(errno.ENETDOWN, "Network is down")
    assert capture.drain(sock) == [b"a"]


def test_drain_names_the_interface_that_vanished(fakes: dict[str, Any]) -> None:
    capture = Capture(WANTED, ("wg0",))
    [sock] = capture.sockets()
    fakes["sockets"][0].then = OSError(errno.ENODEV, "No such device")
    with pytest.raises(CaptureError, match="^capturing on wg0 failed: No such device$"):
        capture.drain(sock)


def test_close_is_idempotent(fakes: dict[str, Any]) -> None:
    with Capture(WANTED, ("eth0", "wg0")) as capture:
        assert len(capture.sockets()) == 2
    assert all(sock.closed for sock in fakes["sockets"]) and capture.sockets() == []
    capture.close()
