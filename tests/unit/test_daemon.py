"""The daemon's pure parts: pipe messages, log lines, the supervisor's re-check,
what needs a restart, and the worker fed with packet bytes (no sockets, no root)."""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import os
import time
from pathlib import Path

import pyotp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.packet import Raw

from spa import config as config_module
from spa.cli import main
from spa.client import tokens
from spa.core.events import Accepted, Carrier, Duplicate, Grant, Reason, Rejection, Request
from spa.core.keys import load_client_key
from spa.core.ledger import Ledger
from spa.core.sequence import SequenceRule
from spa.daemon import messages, recheck, report
from spa.daemon.supervisor import MAX_HELD, Supervisor, restart_needed
from spa.daemon.worker import Worker
from spa.firewall import open_backend

ALICE = ipaddress.ip_address("198.51.100.7")
SSH = Request("tcp", 22)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    directory = tmp_path / "srv"
    assert main(["init", "--dir", str(directory), "--protect", "tcp/22,tcp/3389", "--zone", "knock.test",
                 "--backend", "dry-run"]) == 0
    config = directory / "spa.toml"
    config.write_text(config.read_text() + '\n[sequences.office]\nports = ["tcp/7000", "udp/8000"]\nopen = ["tcp/3389"]\n')
    key = tmp_path / "alice.spakey"
    assert main(["keygen", "alice", "--config", str(config), "--server", "192.0.2.1", "--out", str(key)]) == 0
    return config, key


def make_worker(config_path: Path) -> tuple[Worker, list[messages.Message]]:
    config = config_module.load(config_path)
    sent: list[messages.Message] = []
    worker = Worker(config, config_module.load_keyring(config), Ledger(700), sent.append)
    return worker, sent


# -- messages ------------------------------------------------------------------

def test_grants_and_stats_cross_the_pipe_intact() -> None:
    grant = messages.Timed(Grant(ALICE, SSH, 30, "alice", Carrier.DNS, single_use=True), 1_700_000_000.25)
    assert messages.decode(messages.encode(grant)) == grant
    stats = messages.Stats({"gate.accepted": 3})
    assert messages.decode(messages.encode(stats)) == stats
    assert messages.decode(messages.encode(messages.Synced())) == messages.Synced()
    assert messages.decode(messages.encode(messages.Discard())) == messages.Discard()


@pytest.mark.parametrize("line", [
    b"", b"{", b"[]", b'{"grant": {}}', b'{"grant": 1, "stats": 2}',
    b'{"grant": {"address": "1.2.3.4", "request": "tcp/22", "seconds": 0, "key": "a", "carrier": "dns", "single_use": false}}',
    b'{"grant": {"address": "1.2.3.4", "request": "icmp/1", "seconds": 5, "key": "a", "carrier": "dns", "single_use": false}}',
    b'{"grant": {"address": "1.2.3.4", "request": "tcp/22", "seconds": 5, "key": "a", "carrier": "smoke", "single_use": false}}',
    b'{"grant": {"address": "1.2.3.4", "request": "tcp/22", "seconds": true, "key": "a", "carrier": "dns", "single_use": false}}',
    b'{"grant": {"address": "1.2.3.4", "request": "tcp/22", "seconds": 5, "key": "a", "carrier": "dns", "single_use": false}}',
    b'{"grant": {"address": "1.2.3.4", "request": "tcp/22", "seconds": 5, "key": "a", "carrier": "dns", "single_use": false, "at": NaN}}',
    b'{"grant": {"address": "1.2.3.4", "request": "tcp/22", "seconds": 5, "key": "a", "carrier": "dns", "single_use": false, "at": "now"}}',
    b'{"stats": {"x": 1}}' + b" " * messages.MAX_LINE,
    # Regressions: nesting deeper than Python's recursion limit raised RecursionError,
    # and a scoped IPv6 address carried free text towards the firewall command.
    b"[" * (messages.MAX_LINE - 1),
    b'{"grant": {"address": "1.2.3.4", "request": null, "seconds": 5, "key": "a", "carrier": "dns", "single_use": false, '
    b'"at": 1.0}}',
    b'{"grant": {"address": "fe80::1%x } ; flush ruleset", "request": "tcp/22", "seconds": 5, "key": "a", '
    b'"carrier": "dns", "single_use": false, "at": 1.0}}',
])
def test_malformed_lines_are_dropped(line: bytes) -> None:
    assert messages.decode(line) is None


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_grant_like = st.fixed_dictionaries({"grant": st.fixed_dictionaries({
    "address": st.one_of(st.ip_addresses().map(str), st.text(max_size=40), _json),
    "request": st.one_of(st.sampled_from(["tcp/22", "udp/53", "22", "tcp/0"]), st.text(max_size=12), _json),
    "seconds": st.one_of(st.integers(-5, 90000), _json),
    "key": st.one_of(st.sampled_from(["alice", "sequence:office"]), _json),
    "carrier": st.one_of(st.sampled_from([c.value for c in Carrier]), _json),
    "single_use": st.one_of(st.booleans(), _json),
    "at": st.one_of(st.floats(), st.integers(), _json),
})})


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), _json.map(lambda v: json.dumps(v).encode()),
                 _grant_like.map(lambda v: json.dumps(v).encode()),
                 st.integers(1, messages.MAX_LINE // 2).map(lambda n: b"[" * n + b"]" * n)))
def test_decode_gives_a_message_or_none_for_any_line(line: bytes) -> None:
    decoded = messages.decode(line)
    assert decoded is None or isinstance(decoded, (messages.Timed, messages.Stats, messages.Synced, messages.Discard))
    if isinstance(decoded, messages.Timed):
        assert messages.decode(messages.encode(decoded)) == decoded


def test_line_reader_splits_and_bounds_a_partial_line() -> None:
    reader = messages.LineReader()
    assert reader.feed(b"one\ntw") == [b"one"]
    assert reader.feed(b"o\n") == [b"two"]
    assert reader.feed(b"x" * 100_000) == []
    assert len(reader._buffer) <= messages.MAX_LINE + 1


# -- report --------------------------------------------------------------------

def test_log_lines_say_who_what_and_why() -> None:
    grant = Grant(ALICE, SSH, 30, "alice", Carrier.DNS)
    resolver = ipaddress.ip_address("192.0.2.53")
    line = report.describe(Accepted((grant,), "alice", Carrier.DNS, resolver))
    assert line == "accepted alice via dns from 192.0.2.53: 198.51.100.7 tcp/22 for 30 s"
    rejected = Rejection(Reason.BAD_MAC, ALICE, Carrier.ICMP, "", "alice")
    assert report.describe(rejected) == "rejected key alice from 198.51.100.7 via icmp: bad authenticator"
    assert report.describe(Rejection(Reason.MALFORMED, ALICE, Carrier.ICMP)) is None  # counted, not logged
    assert report.describe(Duplicate(ALICE, Carrier.ICMP, "alice")) is None
    junk = Rejection(Reason.MALFORMED, ALICE, Carrier.ICMP)
    assert report.most_telling([junk, rejected]) is rejected
    assert report.most_telling([junk]) is junk


# -- the supervisor's second look ----------------------------------------------

def test_recheck_applies_the_supervisors_own_policy(setup: tuple[Path, Path]) -> None:
    config = config_module.load(setup[0])
    keyring = config_module.load_keyring(config)

    def why(**change: object) -> str | None:
        values = {"address": ALICE, "request": SSH, "seconds": 30, "key": "alice", "carrier": Carrier.ICMP}
        values.update(change)
        return recheck.refusal(Grant(**values), keyring, config.firewall)  # type: ignore[arg-type]

    assert why() is None
    assert "no key" in str(why(key="mallory"))
    assert "may not open" in str(why(request=Request("tcp", 80)))
    assert "max_seconds" in str(why(seconds=301))
    assert why(key="sequence:office", request=Request("tcp", 3389), carrier=Carrier.SEQUENCE) is None
    assert "carrier" in str(why(key="sequence:office", request=Request("tcp", 3389), carrier=Carrier.UDP))


def test_what_a_reload_cannot_change(setup: tuple[Path, Path]) -> None:
    path = setup[0]
    old = config_module.load(path)
    text = path.read_text()
    path.write_text(text.replace("key_rate = 0.5", "key_rate = 2.0"))
    assert restart_needed(old, config_module.load(path)) is None
    path.write_text(text.replace("port = 62201", "port = 62202"))
    assert "knock ports" in str(restart_needed(old, config_module.load(path)))
    path.write_text(text.replace('mode = "serve"', 'mode = "sniff"'))
    assert "dns" in str(restart_needed(old, config_module.load(path)))


# -- the worker, fed bytes -------------------------------------------------------

def test_worker_grants_a_ping_once_and_counts_junk(setup: tuple[Path, Path]) -> None:
    worker, sent = make_worker(setup[0])
    key = load_client_key(setup[1])
    now = time.time()
    token = tokens.compact_token(key, int(now), ALICE)
    ping = bytes(IP(src=str(ALICE), dst="192.0.2.1") / ICMP(type=8) / Raw(bytes(16) + token * 3))
    decision = worker.packet(ping, now)
    assert isinstance(decision, Accepted)
    assert sent == [messages.Timed(Grant(ALICE, SSH, 30, "alice", Carrier.ICMP), now), messages.Synced()]
    assert isinstance(worker.packet(ping, now + 1), Duplicate)  # ping's next echo
    assert len(sent) == 2
    junk = bytes(IP(src=str(ALICE), dst="192.0.2.1") / UDP(dport=62201) / Raw(b"x" * 8))
    assert worker.packet(junk, now) is None
    assert worker.packet(b"\x45garbage", now) is None
    stats = worker.stats()
    assert stats["gate.accepted"] == 1 and stats["junk"] == 1 and stats["packets.unparsed"] == 1


def test_worker_answers_dns_the_same_and_grants_after(setup: tuple[Path, Path]) -> None:
    from dnslib import DNSRecord

    worker, sent = make_worker(setup[0])
    key = load_client_key(setup[1])
    now = time.time()
    good = tokens.dns_name(tokens.compact_token(key, int(now), ALICE), "knock.test")
    bad = tokens.dns_name(bytes(16), "knock.test")
    replies = []
    for name in (good, bad):
        query = worker.dns_query(DNSRecord.question(name).pack())
        assert query.response is not None and query.label
        replies.append(DNSRecord.parse(query.response))
        worker.label(query.label, ALICE, now)
    assert [r.header.rcode for r in replies] == [0, 0]
    assert [len(r.rr) for r in replies] == [0, 0] and [len(r.auth) for r in replies] == [1, 1]
    assert sent == [messages.Timed(Grant(ALICE, SSH, 30, "alice", Carrier.DNS), now), messages.Synced()]


def test_worker_counts_dns_it_stays_silent_about(setup: tuple[Path, Path]) -> None:
    worker, _ = make_worker(setup[0])
    loop = bytes.fromhex("1234 0100 0001 0000 0000 0000 c00c 0001 0001")  # the question name points at itself
    for message in (b"", b"\x12\x34\x01", loop):
        assert worker.dns_query(message).response is None
    formerr = worker.dns_query(bytes.fromhex("1234 0100 0000 0000 0000 0000"))  # no question: answered
    assert formerr.response is not None and formerr.response[3] & 0xF == 1
    stats = worker.stats()
    assert stats["packets.dns"] == 4 and stats["dns.unanswered"] == 3


def test_worker_completes_fixed_and_one_time_sequences(setup: tuple[Path, Path]) -> None:
    worker, sent = make_worker(setup[0])
    key = load_client_key(setup[1])
    now = time.time()

    def send(proto: str, port: int) -> object:
        layer = TCP(dport=port, flags="S") if proto == "tcp" else UDP(dport=port)
        return worker.packet(bytes(IP(src=str(ALICE), dst="192.0.2.1") / layer), now)

    send("tcp", 7000)
    send("tcp", 7000)  # a retransmitted SYN changes nothing
    assert isinstance(send("udp", 8000), Accepted)
    grant = Grant(ALICE, Request("tcp", 3389), 30, "sequence:office", Carrier.SEQUENCE)
    assert sent[-2:] == [messages.Timed(grant, now), messages.Synced()]
    ports = tokens.otp_sequence(key, now, SequenceRule())
    decisions = [send("tcp", port) for port in ports]
    assert isinstance(decisions[-1], Accepted) and sent[-2].grant.key == "alice"


# -- a grant is applied only once its token is on disk ----------------------------

class _FullDisk(Ledger):
    """A ledger whose records never become durable (fsync fails)."""

    def sync(self) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_worker_withdraws_a_grant_whose_record_cannot_be_made_durable(setup: tuple[Path, Path]) -> None:
    config = config_module.load(setup[0])
    sent: list[messages.Message] = []
    worker = Worker(config, config_module.load_keyring(config), _FullDisk(700), sent.append)
    now = time.time()
    token = tokens.compact_token(load_client_key(setup[1]), int(now), ALICE)
    ping = bytes(IP(src=str(ALICE), dst="192.0.2.1") / ICMP(type=8) / Raw(bytes(16) + token * 3))
    decision = worker.packet(ping, now)
    assert isinstance(decision, Rejection) and decision.reason is Reason.STATE_UNWRITABLE
    assert "No space left" in decision.detail
    assert sent == [messages.Timed(Grant(ALICE, SSH, 30, "alice", Carrier.ICMP), now), messages.Discard()]
    worker.packet(ping, now + 1)  # the token stays spent: it can never be granted later
    assert len(sent) == 2


def test_supervisor_applies_a_grant_only_after_the_workers_synced(setup: tuple[Path, Path]) -> None:
    supervisor = Supervisor(setup[0])  # the dry-run backend: no root, no kernel state
    backend = supervisor.backend = open_backend(supervisor.config.firewall)

    def timed(address: str = "198.51.100.7", key: str = "alice", late: float = 0.0) -> messages.Timed:
        return messages.Timed(Grant(ipaddress.ip_address(address), SSH, 30, key, Carrier.UDP), time.time() - late)

    first = timed()
    supervisor._handle(first)
    assert backend.live() == [] and supervisor.held == [first]  # checked, held
    supervisor._handle(messages.Synced())
    assert [(g.address, g.request) for g in backend.live()] == [(ALICE, SSH)]
    supervisor._handle(timed("198.51.100.8"))
    supervisor._handle(messages.Discard())
    supervisor._handle(messages.Synced())  # a Synced after Discard releases nothing
    assert len(backend.live()) == 1 and supervisor.granted == 1
    supervisor._handle(timed(key="mallory"))  # refused at once, never held
    for number in range(MAX_HELD + 5):  # a subverted worker cannot pile up grants
        supervisor._handle(timed(f"198.51.101.{number}"))
    # Held up to MAX_HELD, and before that the key's grant budget (2 of it spent above) stops them.
    ports = len(supervisor.keyring.by_name["alice"].record.policy.open)
    assert len(supervisor.held) == min(MAX_HELD, supervisor.grant_budget.burst * ports - 2)


def test_a_late_grant_gets_only_what_is_left_of_it(setup: tuple[Path, Path]) -> None:
    """A knock accepted while the supervisor was stopped ends when it would have."""
    supervisor = Supervisor(setup[0])
    backend = supervisor.backend = open_backend(supervisor.config.firewall)
    now = time.time()
    for address, at in (("198.51.100.1", now - 20), ("198.51.100.2", now - 31), ("198.51.100.3", now + 3600)):
        supervisor._handle(messages.Timed(Grant(ipaddress.ip_address(address), SSH, 30, "alice", Carrier.UDP), at))
    supervisor._handle(messages.Synced())
    left = {str(g.address): g.seconds_left for g in backend.live()}
    assert set(left) == {"198.51.100.1", "198.51.100.3"}  # the second one had already ended
    assert 8 <= left["198.51.100.1"] <= 10
    assert 29 <= left["198.51.100.3"] <= 30  # a time in the future never lengthens a grant


def test_die_with_parent_arms_the_signal_and_refuses_a_parent_already_gone() -> None:
    """The worker asks for SIGTERM when the supervisor dies (again after dropping
    privilege, which clears the request); a supervisor already gone is an error.
    Checked in a forked child: the request is per process."""
    import ctypes
    import os
    import signal

    from spa.daemon import privdrop

    pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        code = 1
        try:
            privdrop.die_with_parent(os.getppid())
            armed = ctypes.c_int()
            ctypes.CDLL(None, use_errno=True).prctl(2, ctypes.byref(armed), 0, 0, 0)  # PR_GET_PDEATHSIG
            try:
                privdrop.die_with_parent(os.getppid() + 1)  # not our parent: "already gone"
                refused = False
            except privdrop.PrivilegeError:
                refused = True
            code = 0 if armed.value == signal.SIGTERM and refused else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_dns_sockets_get_a_large_receive_queue() -> None:
    """A DNS flood queues instead of dropping valid knocks with it (as the capture)."""
    import socket
    from pathlib import Path as _Path

    from spa.daemon import listeners

    udp, tcp = listeners._dns_pair("127.0.0.1", 4, 0)
    try:
        granted = udp.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)  # the kernel reports twice the ask
        rmem_max = int(_Path("/proc/sys/net/core/rmem_max").read_text())
        assert granted >= 2 * (listeners.DNS_RCVBUF if os.geteuid() == 0 else min(listeners.DNS_RCVBUF, rmem_max))
    finally:
        udp.close()
        tcp.close()


def test_the_first_wrong_code_and_the_spent_budget_are_warnings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The owner hears of guessing at its first sign, not only from a count in status."""
    directory = tmp_path / "srv"
    assert main(["init", "--dir", str(directory), "--protect", "tcp/22", "--zone", "knock.test",
                 "--backend", "dry-run"]) == 0
    config = directory / "spa.toml"
    config.write_text(config.read_text().replace("otp_failures_per_key = 20", "otp_failures_per_key = 5"))
    assert main(["keygen", "alice", "--config", str(config), "--server", "192.0.2.1", "--totp",
                 "--out", str(tmp_path / "alice.spakey")]) == 0
    worker, _ = make_worker(config)
    secret = worker.gate.keyring.by_name["alice"].record.totp_secret or ""
    now = 1_760_000_000.0
    wrong = next(f"{n:06d}" for n in range(10**6) if all(
        pyotp.TOTP(secret).at(now + step * 30) != f"{n:06d}" for step in (-1, 0, 1)))
    caplog.set_level(logging.INFO, logger="spa")
    for _ in range(5):
        worker.label(f"alice-{wrong}", ALICE, now)
    levels = [(r.levelno, r.getMessage()) for r in caplog.records if "wrong one-time code" in r.getMessage()]
    warn, info = logging.WARNING, logging.INFO
    assert [level for level, _ in levels] == [warn, info, warn, info, warn], levels
    assert "first sign of guessing" in levels[0][1] and "half the budget" in levels[2][1]
    assert "its codes are refused now" in levels[4][1]


def test_root_applies_no_more_grants_per_key_than_its_knocks_could_ask_for(setup: tuple[Path, Path]) -> None:
    """A subverted worker is not held by the gate: an outside review had root
    apply 20,000 grants in 5 s, every one within policy. Root counts per key now."""
    from spa.daemon import recheck

    config_path, _ = setup
    config = config_module.load(config_path)
    keyring = config_module.load_keyring(config)
    budget = recheck.GrantBudget(keyring, config.gate.key_rate, config.gate.key_burst)
    ports = len(keyring.by_name["alice"].record.policy.open)
    now = 1_700_000_000.0
    flood = [Grant(ipaddress.ip_address(f"10.100.{n // 256}.{n % 256}"), SSH, 30, "alice", Carrier.UDP, False)
             for n in range(1000)]
    applied = sum(budget.refusal(grant, now) is None for grant in flood)
    assert applied == config.gate.key_burst * ports, applied
    # Honest knocks refill it as the gate's own key rate does.
    later = now + 10 / config.gate.key_rate
    assert budget.refusal(flood[0], later) is None


def test_rejections_nobody_needs_a_key_for_cannot_flood_the_log(
    setup: tuple[Path, Path], caplog: pytest.LogCaptureFixture,
) -> None:
    """An outside review wrote 3,000 journal lines with 3,000 queries for names
    that are no key (through any resolver: no spoofing needed)."""
    worker, _ = make_worker(setup[0])
    caplog.set_level(logging.INFO, logger="spa")
    now = 1_760_000_000.0
    for n in range(3000):
        worker.label(f"nobody{n % 1000}-123456", ALICE, now + n / 1000)  # 3 s of them
    lines = [r for r in caplog.records if "unknown key" in r.getMessage()]
    assert 50 <= len(lines) <= 50 + 10 * 3 + 1, len(lines)
    assert worker.counts["log.suppressed"] == 3000 - len(lines)
    worker.tick(now + 3)
    assert any("rejections not logged one by one" in r.getMessage() for r in caplog.records)
    assert worker.stats()["gate.unknown_key"] == 3000  # every one still counted


def test_dns_answers_to_one_source_prefix_are_rate_limited_but_knocks_are_heard(setup: tuple[Path, Path]) -> None:
    """A UDP query's source can be forged: beyond the rate, answers would be
    reflections at a victim (an outside review measured up to 14.8x)."""
    from dnslib import DNSRecord

    from spa.daemon.worker import DNS_BURST

    worker, _ = make_worker(setup[0])
    zone = worker.zone
    assert zone is not None
    victim = ipaddress.ip_address("203.0.113.77")
    question = DNSRecord.question("knock.test", "NS").pack()
    now = 1_760_000_000.0
    answers = [worker.udp_query(question, victim, now) for _ in range(DNS_BURST + 100)]
    full = [a for a in answers if a.response is not None and not DNSRecord.parse(a.response).header.tc]
    slipped = [a for a in answers if a.response is not None and DNSRecord.parse(a.response).header.tc]
    assert len(full) == DNS_BURST and len(slipped) == 50, (len(full), len(slipped))
    assert sum(len(a.response or b"") for a in answers[DNS_BURST:]) <= 100 * len(question), "still amplifying"
    # The neighbour in the same /24 shares the budget; another prefix does not.
    neighbour = worker.udp_query(question, ipaddress.ip_address("203.0.113.78"), now)
    assert neighbour.response is None or DNSRecord.parse(neighbour.response).header.tc
    other = worker.udp_query(question, ipaddress.ip_address("198.51.100.1"), now)
    assert other.response is not None and not DNSRecord.parse(other.response).header.tc
    # A knock inside a rate-limited query is still read.
    knock = DNSRecord.question("aaaaaaaaaaaaaaaaaaaaaaaaaa.knock.test", "A").pack()
    assert worker.udp_query(knock, victim, now).label == "aaaaaaaaaaaaaaaaaaaaaaaaaa"


def test_a_new_worker_reads_back_the_rate_limits_the_last_one_saved(setup: tuple[Path, Path], tmp_path: Path) -> None:
    """A reload or a restart starts a new worker: before, every limit started afresh."""
    from spa.core.rates import RateFile

    config = config_module.load(setup[0])
    keyring = config_module.load_keyring(config)
    rates = RateFile(tmp_path / "rates")
    first = Worker(config, keyring, Ledger(700), lambda message: None, rates=rates)
    source = ipaddress.ip_address("203.0.113.77")
    now = time.time()
    for port in range(config.gate.source_burst):  # port hits: the sequence guess budget
        first.tracker.hit(source, Request("tcp", 20000 + port), now)
    assert first.tracker.over_budget == 0
    first.save_rates(now)  # what serve() does when it is stopped
    second = Worker(config, keyring, Ledger(700), lambda message: None, rates=rates)
    assert second.tracker.hit(source, Request("tcp", 30000), now) == []
    assert second.tracker.over_budget == 1, "the new worker forgot the limit"
