"""Dry-run, command and iptables pieces that run without root or kernel state."""

from __future__ import annotations

import ipaddress
import logging
import subprocess
import threading
from collections.abc import Sequence

import pytest

from spa.core.events import Carrier, Grant, Request
from spa.firewall import FirewallError, FirewallSettings
from spa.firewall.command import CommandBackend, substitute
from spa.firewall.dryrun import DryRunBackend
from spa.firewall.iptables import IptablesBackend, parse_save

SSH = Request("tcp", 22)
ALICE = ipaddress.ip_address("192.0.2.7")


def make_grant(address: object = ALICE, seconds: int = 30, single_use: bool = False) -> Grant:
    return Grant(address, SSH, seconds, "alice", Carrier.ICMP, single_use)  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_dry_run_logs_and_lists_until_expiry(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    backend = DryRunBackend(FirewallSettings(backend="dry-run"), clock)
    caplog.set_level(logging.INFO, logger="spa.firewall")
    backend.install()
    backend.grant(make_grant(seconds=30))
    backend.grant(make_grant(ipaddress.ip_address("2001:db8::1"), seconds=10, single_use=True))
    assert "would grant tcp/22 to 192.0.2.7 for 30s (alice via icmp)" in caplog.text
    clock.now += 5
    live = backend.live()
    assert [(str(g.address), g.seconds_left, g.single_use) for g in live] == [
        ("2001:db8::1", 5.0, True), ("192.0.2.7", 25.0, False)]
    backend.grant(make_grant(seconds=60))  # renewal replaces the deadline
    clock.now += 20
    assert [(str(g.address), g.seconds_left) for g in backend.live()] == [("192.0.2.7", 40.0)]
    backend.revoke(ALICE, SSH)
    assert backend.live() == []


def test_dry_run_still_refuses_unprotected_ports() -> None:
    backend = DryRunBackend(FirewallSettings(backend="dry-run"))
    with pytest.raises(FirewallError):
        backend.grant(Grant(ALICE, Request("tcp", 80), 5, "alice", Carrier.UDP))


def test_every_backend_refuses_a_scoped_address() -> None:
    """A scope id is free text that would reach nft/ipset commands verbatim."""
    backend = DryRunBackend(FirewallSettings(backend="dry-run"))
    scoped = ipaddress.ip_address("fe80::1%x } ; flush ruleset")
    with pytest.raises(FirewallError, match="scoped"):
        backend.grant(Grant(scoped, Request("tcp", 22), 5, "alice", Carrier.UDP))


def test_substitute_fills_inside_arguments_without_splitting() -> None:
    argv = substitute(["nft", "add", "element", "{", "%IP%", ".", "%PROTO%", ".", "%PORT%",
                       "timeout", "%SECONDS%s", "}", "--who=%KEY%"],
                      {"%IP%": "192.0.2.7", "%PROTO%": "tcp", "%PORT%": "22",
                       "%SECONDS%": "30", "%KEY%": "a b"})
    assert argv[4:] == ["192.0.2.7", ".", "tcp", ".", "22", "timeout", "30s", "}", "--who=a b"]


class Recorder:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.stopped = threading.Event()

    def __call__(self, argv: Sequence[str]) -> None:
        self.calls.append(list(argv))
        if argv[0] == "stop":
            self.stopped.set()


def command_backend() -> tuple[CommandBackend, Recorder]:
    recorder = Recorder()
    settings = FirewallSettings(backend="command", start_command=("start", "%IP%", "%KEY%"),
                                stop_command=("stop", "%IP%", "%PROTO%/%PORT%"))
    return CommandBackend(settings, recorder), recorder


def test_command_backend_runs_stop_after_the_grant() -> None:
    backend, recorder = command_backend()
    backend.grant(make_grant(seconds=1))
    assert recorder.calls == [["start", "192.0.2.7", "alice"]]
    assert [str(g.address) for g in backend.live()] == ["192.0.2.7"]
    assert recorder.stopped.wait(3)
    assert recorder.calls[-1] == ["stop", "192.0.2.7", "tcp/22"]
    assert backend.live() == []


def test_command_backend_renewal_moves_the_stop_and_close_stops_all() -> None:
    backend, recorder = command_backend()
    backend.grant(make_grant(seconds=1))
    backend.grant(make_grant(seconds=60))  # renewal: the 1 s stop must not fire
    assert not recorder.stopped.wait(1.3)
    backend.close()
    assert recorder.calls[-1][0] == "stop" and len(recorder.calls) == 3


def test_command_backend_revoke_and_single_use() -> None:
    backend, recorder = command_backend()
    backend.grant(make_grant(seconds=60))
    backend.revoke(ALICE, SSH)
    assert recorder.calls[-1][0] == "stop" and backend.live() == []
    backend.revoke(ALICE, SSH)  # revoking twice is fine
    with pytest.raises(FirewallError, match="single-use"):
        backend.grant(make_grant(single_use=True))


def test_parse_ipset_save() -> None:
    text = (
        "create spa_grant4 hash:ip,port family inet hashsize 1024 maxelem 65536 timeout 3600 comment\n"
        'add spa_grant4 10.0.0.2,tcp:22 timeout 8 comment "alice/dns"\n'
        "add spa_grant6 fd00::2,udp:53 timeout 4\n"
    )
    grants = parse_save(text)
    assert [(str(g.address), str(g.request), g.seconds_left, g.key) for g in grants] == [
        ("10.0.0.2", "tcp/22", 8.0, "alice"), ("fd00::2", "udp/53", 4.0, None)]


class FakeIptablesCall:
    """Stands in for IptablesBackend._call: records argv, answers ``-S INPUT`` with ``policy``."""

    def __init__(self, policy: str = "ACCEPT") -> None:
        self.argv: list[list[str]] = []
        self.policy = policy

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.argv.append(list(argv))
        out = f"-P INPUT {self.policy}\n" if list(argv[-2:]) == ["-S", "INPUT"] else ""
        return subprocess.CompletedProcess(list(argv), 0, out, "")

    def rules(self, tool: str) -> list[list[str]]:
        return [argv[4:] for argv in self.argv if argv[0] == tool and argv[2:4] == ["-A", "spa_guard"]]


IPTABLES_SETTINGS = {"backend": "iptables", "protect": (SSH, Request("udp", 53)),
                     "quiet": (("udp", 62201, 62201), ("tcp", 20000, 59999))}


@pytest.mark.parametrize(
    ("stealth", "tcp", "udp4", "udp6"),
    [
        ("closed", ["-j", "REJECT", "--reject-with", "tcp-reset"],
         ["-j", "REJECT", "--reject-with", "icmp-port-unreachable"],
         ["-j", "REJECT", "--reject-with", "icmp6-port-unreachable"]),
        ("drop", ["-j", "DROP"], ["-j", "DROP"], ["-j", "DROP"]),
    ],
)
def test_iptables_guard_refuses_as_stealth_says(monkeypatch: pytest.MonkeyPatch, stealth: str,
                                                tcp: list[str], udp4: list[str], udp6: list[str]) -> None:
    recorder = FakeIptablesCall()
    monkeypatch.setattr(IptablesBackend, "_call", staticmethod(recorder))
    IptablesBackend(FirewallSettings(**IPTABLES_SETTINGS, stealth=stealth)).install()  # type: ignore[arg-type]
    accepted = [["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN"]]
    for tool, set_name, udp in (("iptables", "spa_grant4", udp4), ("ip6tables", "spa_grant6", udp6)):
        assert recorder.rules(tool) == [
            *accepted,
            ["-m", "set", "--match-set", set_name, "src,dst", "-j", "RETURN"],
            ["-p", "tcp", "--dport", "22", *tcp],
            ["-p", "udp", "--dport", "53", *udp],
            ["-p", "tcp", "--dport", "20000:59999", *tcp],
            ["-p", "udp", "--dport", "62201:62201", *udp],
        ], tool


@pytest.mark.parametrize(("stealth", "policy", "warned"),
                         [("closed", "DROP", True), ("closed", "ACCEPT", False), ("drop", "DROP", False)])
def test_iptables_warns_when_closed_meets_a_default_drop_input(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        stealth: str, policy: str, warned: bool) -> None:
    monkeypatch.setattr(IptablesBackend, "_call", staticmethod(FakeIptablesCall(policy)))
    backend = IptablesBackend(FirewallSettings(**IPTABLES_SETTINGS, stealth=stealth))  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="spa.firewall.iptables"):
        backend.install()
        caplog_install = [r.getMessage() for r in caplog.records]
        backend.repair()  # said once, at install; a repair does not say it again
    messages = [r.getMessage() for r in caplog.records]
    assert messages == caplog_install
    assert bool(messages) == warned, messages
    if warned:
        assert "iptables INPUT, ip6tables INPUT drop by default" in messages[0]
