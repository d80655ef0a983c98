"""Replayed knocks never earn a second grant (issue 7, "Proof of safety").

One knock per carrier (ping, DNS at the server, DNS through a resolver,
an SPA datagram, a one-time port sequence, TOTP codes by DNS and by ping),
each by its own key so the log lines stay apart, is captured with tcpdump
on the server's link (an eavesdropper on the path) and re-sent with scapy:
from the address it came from, and from bob's with the source rewritten and
the checksums computed afresh. The copies go out at once, later inside the
time window, after SIGKILL of spa (the supervisor and its worker at once,
then the supervisor alone) and a restart, after a clean restart, and after
the window has passed. Each time: no new grant for
anyone (``spa status``, probes from alice and bob, the worker's counters),
and the log says why. A fixed knockd-style sequence is shown for contrast:
its copies do open, by design. The verdicts are tabled in docs/gate.md.

The tests share one world and one ``spa serve`` and run in file order (the
fixture makes the originals and their copies "at once"; each later phase
waits for its moment itself). spa runs with a 45 s time window, a 5 s
repeat window and 2 s grants: the file takes about a minute, most of it
waiting for the tokens and the 30 s code steps to expire.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyotp
import pytest
from world import Agent, need_netns
from world.daemon import ZONE
from world.knocking import SERVER, Knocking, prepare
from world.netns import wait_until
from world.replay import counters, empty_pcap, live_grants, pcap_count, tapped
from world.resolver import RESOLVER, add_resolver

from spa.client import tokens
from spa.core import otp
from spa.core.keys import ClientKey, load_client_key

pytestmark = pytest.mark.netns

ALICE = "10.77.1.2"
BOB, BOB_SERVER = "10.77.2.2", "10.77.2.1"  # bob, and the server's address on bob's link
TIME_WINDOW = 45  # [server] time_window of this test's spa: a token's life
REPEAT_WINDOW = 5  # [server] repeat_window: a repeat from the same address is the same knock
GRANT = 2  # [policy] seconds
STEP = 30  # TOTP interval and one-time sequence step (client defaults)
TOTP_REACH = 1  # [otp] totp_steps: codes of this many steps either side are accepted
SEQUENCE_REACH = -(-TIME_WINDOW // STEP)  # sequences: the steps the time window covers, either side
# Codes and sequences live in 30 s steps, not in the time window: each is
# knocked with the step that stays valid at least this long after the knock
# (so every phase but the last sees it live) and ends soonest after that.
STEP_LIFE = 28
FIXED = '\n[sequences.office]\nports = ["tcp/7000", "udp/8000", "tcp/9000"]\ntimeout = 5\nopen = ["tcp/22"]\n'
SPA = [sys.executable, "-m", "spa"]


@dataclass(frozen=True)
class Knock:
    """One original knock and its capture."""

    key: str  # the key that knocked: the log's "accepted KEY via CARRIER"
    carrier: str  # as the log names it
    pcap: Path
    packets: int  # packets the knock sent (each is one decision; a sequence is one for all)
    expires: float  # the first wall-clock second at which the server finds it stale
    accepted: float  # when the original was accepted (the log said so)
    code: bool = False  # a one-time code or sequence: expiry reads as "no such code", not "stale"
    origin: str = ALICE  # where the original came from: a copy from there is "the same address"
    named: bool = False  # an extended token: it names alice, wherever it comes from

    @property
    def decisions(self) -> int:
        return 1 if self.carrier == "sequence" else self.packets


@dataclass(frozen=True)
class Replays:
    """The served world, the original knocks so far, and the checks every phase makes."""

    k: Knocking
    knocks: list[Knock]
    senders: dict[str, Agent]  # an agent at each origin, for copies from the same address

    def log(self) -> str:
        return self.k.served.log()

    def resend(self, knock: Knock) -> None:
        """The capture again from its origin (as captured) and from bob (source rewritten)."""
        sent = self.senders[knock.origin].call("resend", pcap=str(knock.pcap))["sent"]
        assert sent == knock.packets
        sent = self.k.bob.call("resend", pcap=str(knock.pcap), source=BOB, destination=BOB_SERVER)["sent"]
        assert sent == knock.packets

    def resend_all(self) -> int:
        """Every capture from both hosts; the log offset before them."""
        offset = len(self.log())
        for knock in self.knocks:
            self.resend(knock)
        return offset

    def await_lines(self, offset: int, expected: dict[str, int], timeout: float = 10.0) -> None:
        """Wait until every expected line appears (at least) as often as given after ``offset``."""
        def seen() -> bool:
            text = self.log()[offset:]
            return all(text.count(line) >= count for line, count in expected.items())

        assert wait_until(seen, timeout, 0.05), (
            "missing: " + repr({line: count for line, count in expected.items()
                                if self.log()[offset:].count(line) < count}) + "\n" + self.log()[offset:]
        )

    def nobody_granted_again(self, offset: int) -> None:
        """No accepted line since ``offset``, each original exactly once, nothing open, nothing listed."""
        log = self.log()
        assert not [line for line in log[offset:].splitlines() if line.startswith(("accepted ", "granted "))], log
        for knock in self.knocks:
            assert log.count(f"accepted {knock.key} via {knock.carrier}") == 1, log
        assert live_grants(self.k.served, self.k.world.server) == []
        assert self.k.probe(self.k.bob) == "refused", "a replay opened the port for bob"
        assert self.k.probe() == "refused", "a replay opened the port for alice again"

    def replayed(self, offset: int) -> None:
        """Every capture, from its origin and from bob, is logged as a replayed token."""
        self.await_lines(offset, {
            f"rejected key {knock.key} from {source} via {knock.carrier}: replayed token": knock.decisions
            for knock in self.knocks for source in (knock.origin, BOB)
        })

    def settled(self) -> None:
        """Past the repeat window of every original, and every grant gone: from
        here a copy from alice's own address is a replay too, and a new grant
        would show as an open port for her."""
        time.sleep(max(0.0, max(knock.accepted for knock in self.knocks) + REPEAT_WINDOW + 0.5 - time.time()))
        assert wait_until(lambda: live_grants(self.k.served, self.k.world.server) == [], GRANT + 5, 0.2)

    def copies_are_replays(self) -> None:
        """Inside the time window, every copy is refused as a replay and opens nothing."""
        self.still_in_window()
        offset = self.resend_all()
        self.replayed(offset)
        self.nobody_granted_again(offset)

    def still_in_window(self) -> None:
        left = min(knock.expires for knock in self.knocks) - time.time()
        assert left > 1, f"the machine is too slow for this test: the window closed {-left:.0f} s early"


def running(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie has ended: its new parent just has not reaped it yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def step_for(now: float, reach: int) -> int:
    """The step to knock with: accepted now (``reach`` steps either side of the
    current one are), alive at least STEP_LIFE s more, and the first to end after that."""
    current = int(now) // STEP
    return next(step for step in range(current - reach, current + reach + 1)
                if ends(step, reach) - now >= STEP_LIFE)


def ends(step: int, reach: int) -> int:
    """The first second at which ``step`` is more than ``reach`` steps in the past."""
    return (step + reach + 1) * STEP


def original(k: Knocking, key: str, carrier: str, expression: str, argv: list[str], packets: int,
             expires: float | None, code: bool = False, origin: str = ALICE) -> Knock:
    """Knock from alice while tcpdump on the server's link from ``origin`` keeps the packets.

    ``expires`` None: a token the knocking command makes itself, so at the
    latest when it returns; it is stale a window and a second later."""
    pcap = k.served.directory / f"{key}.pcap"
    link = "client1" if origin == ALICE else "resolver"
    with tapped(k.world, k.world.server, link, f"src host {origin} and {expression}", pcap, packets):
        result = k.world.alice.run(argv, check=False, timeout=30)
    via = "" if origin == ALICE else f" from {origin}"
    assert k.served.wait_log(f"accepted {key} via {carrier}{via}: {ALICE} tcp/22", 5), (
        result.stdout + result.stderr + k.served.log())
    if expires is None:
        expires = int(time.time()) + TIME_WINDOW + 1
    return Knock(key, carrier, pcap, pcap_count(pcap), expires, time.time(), code, origin, origin != ALICE)


def client_key(k: Knocking, name: str) -> ClientKey:
    return load_client_key(k.served.key_path(name))


def totp_code(k: Knocking, key: str, step: int) -> str:
    record = tomllib.loads((k.served.directory / "keys" / f"{key}.toml").read_text())
    return str(pyotp.TOTP(record["totp_secret"]).at(step * STEP))


@pytest.fixture(scope="module")
def replays(request: pytest.FixtureRequest) -> Iterator[Replays]:
    """spa serving; one original knock per carrier, each captured and re-sent at once."""
    need_netns("nft", "ping", "dig", "nslookup", "knock", "tcpdump", "unbound", libraries=("nftables",))
    k = prepare(request, statics=FIXED)
    served = k.served
    served.edit("time_window = 60", f"time_window = {TIME_WINDOW}")
    served.edit("repeat_window = 30", f"repeat_window = {REPEAT_WINDOW}")
    served.edit("seconds = 3 ", f"seconds = {GRANT} ")
    for name in ("dns", "udp", "resolver", "sequence", "fresh"):
        served.keygen(name)
    for name in ("totpdns", "totpping"):
        served.keygen(name, "--totp")
    served.start()
    resolver = k.world.agent(add_resolver(k.world, ZONE, served.directory))
    # Load scapy in both agents now, so that "at once" below is at once.
    empty = empty_pcap(served.directory / "empty.pcap")
    for agent in (k.alice, k.bob, resolver):
        assert agent.call("resend", pcap=str(empty))["sent"] == 0
    k.closed_before()
    replays = Replays(k, [], {ALICE: k.alice, RESOLVER: resolver})
    alice = ipaddress.ip_address(ALICE)

    def at_once(knock: Knock) -> None:
        replays.knocks.append(knock)
        replays.resend(knock)

    # Tokens first: their time window must outlast every phase but the last.
    now = int(time.time())
    pattern = tokens.ping_pattern(tokens.compact_token(k.key, now, alice))
    at_once(original(k, "alice", "icmp", "icmp[icmptype] == icmp-echo",
                     ["ping", "-c", "1", "-W", "1", "-p", pattern, SERVER], 1, now + TIME_WINDOW + 1))
    now = int(time.time())
    name = tokens.dns_name(tokens.compact_token(client_key(k, "dns"), now, alice), ZONE)
    at_once(original(k, "dns", "dns", "udp dst port 53",
                     ["dig", f"@{SERVER}", name, "+tries=1", "+time=2"], 1, now + TIME_WINDOW + 1))
    at_once(original(k, "udp", "udp", "udp dst port 62201",
                     [*SPA, "knock", "--key", str(served.key_path("udp")), "--via", "udp", "--no-wait", SERVER],
                     1, None))
    # Through the resolver: `spa knock` makes an extended token (naming alice)
    # for a DNS server that is not the target; Unbound passes it on.
    at_once(original(k, "resolver", "dns", "udp dst port 53",
                     [*SPA, "knock", "--key", str(served.key_path("resolver")), "--via", "dns", "--dns-server", RESOLVER,
                      "--no-wait", SERVER], 1, None, origin=RESOLVER))
    # Then the 30 s steps: a one-time sequence from `spa token`, sent by `knock`,
    # and TOTP codes as an authenticator app shows them, by nslookup and by ping.
    step = step_for(time.time(), SEQUENCE_REACH)
    printed = k.world.alice.run([*SPA, "token", "--key", str(served.key_path("sequence")), "--via", "sequence",
                                 "--at", str(step * STEP)], timeout=30).stdout.split()
    at_once(original(k, "sequence", "sequence", "tcp[tcpflags] & tcp-syn != 0 and tcp dst portrange 20000-59999",
                     ["knock", "-d", "50", SERVER, *printed], 3, ends(step, SEQUENCE_REACH), code=True))
    step = step_for(time.time(), TOTP_REACH)
    label = otp.to_label("totpdns", totp_code(k, "totpdns", step))
    at_once(original(k, "totpdns", "dns", "udp dst port 53", ["nslookup", f"{label}.{ZONE}.", SERVER], 2,
                     ends(step, TOTP_REACH), code=True))
    step = step_for(time.time(), TOTP_REACH)
    pattern = otp.to_pattern(client_key(k, "totpping").key_id, totp_code(k, "totpping", step))
    at_once(original(k, "totpping", "icmp", "icmp[icmptype] == icmp-echo",
                     ["ping", "-c", "1", "-W", "1", "-p", pattern, SERVER], 1, ends(step, TOTP_REACH), code=True))
    yield replays
    served.stop()


def test_a_copy_at_once_is_a_duplicate_from_its_origin_and_refused_from_bob(replays: Replays) -> None:
    r = replays
    # From bob: a replay. The datagram's AEAD binds alice's address, so inside
    # the repeat window (the ledger lets a same-address repeat through to the
    # AEAD) bob's copy fails authentication instead.
    r.await_lines(0, {
        f"rejected key {knock.key} from {BOB} via {knock.carrier}: "
        f"{'bad authenticator' if knock.carrier == 'udp' else 'replayed token'}": knock.decisions
        for knock in r.knocks if not knock.named
    })
    # From the same address: the same knock again, counted as a duplicate,
    # neither logged nor granted. So is a copy of an extended token from
    # anywhere: it names alice, and alice has had her grant.
    counts = counters(r.k.served)
    assert counts["gate.accepted"] == len(r.knocks), counts
    repeats_in_originals = sum(knock.decisions - 1 for knock in r.knocks)  # nslookup asks twice
    copies = sum(knock.decisions * (2 if knock.named else 1) for knock in r.knocks)
    assert counts["gate.duplicate"] == repeats_in_originals + copies, counts
    log = r.log()
    origins = [f"from {origin} " for origin in r.senders]
    assert not [line for line in log.splitlines() if line.startswith("rejected") and any(o in line for o in origins)]
    assert not [line for line in log.splitlines() if line.startswith("rejected key resolver")], log
    for knock in r.knocks:
        assert log.count(f"accepted {knock.key} via {knock.carrier}") == 1, log
    assert {grant.address for grant in live_grants(r.k.served, r.k.world.server)} <= {ALICE}
    assert r.k.probe(r.k.bob) == "refused", "a copy opened the port for bob"


def test_copies_later_in_the_window_are_replays_from_anywhere(replays: Replays) -> None:
    r = replays
    r.settled()
    r.copies_are_replays()


def test_copies_after_sigkill_of_spa_and_its_worker_are_replays(replays: Replays) -> None:
    """SIGKILL of the whole service at once, as systemd's KillMode=control-group
    or the OOM killer does it. The worker is frozen first so that it cannot tidy
    up on its way out, and it is the process that accepted the originals: the
    ledger must already be in the file, not in a buffer."""
    r = replays
    r.settled()
    served = r.k.served
    assert served.process is not None
    worker = served.worker_pid()
    os.kill(worker, signal.SIGSTOP)
    served.signal(signal.SIGKILL)
    os.kill(worker, signal.SIGKILL)
    served.process.wait(timeout=10)
    assert wait_until(lambda: not running(worker), 5, 0.05)
    assert r.k.probe() == "refused"  # the guard stays while spa is down
    served.start()
    r.copies_are_replays()


def test_copies_after_sigkill_of_the_supervisor_are_replays(replays: Replays) -> None:
    """SIGKILL of the supervisor alone: the worker ends by itself at once (it
    asked the kernel for a signal when its parent dies), and a restart finds
    the ledger.

    Killed just after the worker's periodic report reached the supervisor
    (status.json is rewritten): an orphan that missed the signal would run on
    until its next report, 5 s later, found the pipe broken."""
    r = replays
    r.settled()
    served = r.k.served
    assert served.process is not None
    worker = served.worker_pid()
    status = served.directory / "state" / "status.json"
    last = status.stat().st_mtime_ns if status.exists() else 0
    assert wait_until(lambda: status.exists() and status.stat().st_mtime_ns != last, 10, 0.01)
    served.signal(signal.SIGKILL)
    served.process.wait(timeout=10)
    assert wait_until(lambda: not running(worker), 3, 0.05), "the worker outlived SIGKILL of spa"
    assert r.k.probe() == "refused"
    served.start()
    r.copies_are_replays()


def test_copies_after_a_clean_restart_are_replays(replays: Replays) -> None:
    """SIGTERM and a start on the same state directory. One more knock is made
    just before, and copied from alice just after, inside its repeat window:
    the ledger kept when it was accepted, so that is the same knock again (a
    duplicate), and the grant the restart ended does not come back."""
    r = replays
    r.settled()
    k = r.k
    now = int(time.time())
    pattern = tokens.ping_pattern(tokens.compact_token(client_key(k, "fresh"), now, ipaddress.ip_address(ALICE)))
    fresh = original(k, "fresh", "icmp", "icmp[icmptype] == icmp-echo",
                     ["ping", "-c", "1", "-W", "1", "-p", pattern, SERVER], 1, now + TIME_WINDOW + 1)
    assert k.served.stop() == 0
    k.served.start()
    offset = len(r.log())
    inside = time.time() - fresh.accepted < REPEAT_WINDOW - 0.5
    assert k.alice.call("resend", pcap=str(fresh.pcap))["sent"] == 1
    if inside:
        assert wait_until(lambda: counters(k.served).get("gate.duplicate") == 1, 5, 0.1), r.log()[offset:]
    else:  # a slow restart: past the repeat window the same copy is a replay
        r.await_lines(offset, {f"rejected key fresh from {ALICE} via icmp: replayed token": 1})
    assert r.log().count("accepted fresh via icmp") == 1
    assert k.probe() == "refused", "the grant the restart ended came back"
    r.copies_are_replays()


def test_copies_after_the_window_are_stale(replays: Replays) -> None:
    r = replays
    time.sleep(max(0.0, max(knock.expires for knock in r.knocks) + 0.5 - time.time()))
    before = counters(r.k.served)
    offset = r.resend_all()
    # Tokens are refused as out of their window; a code of a past step is no
    # code at all (and counts toward the source's lockout); a past step's
    # port sequence is not in the table, so its ports are plain closed ports.
    r.await_lines(offset, {
        f"rejected key {knock.key} from {source} via {knock.carrier}: "
        f"{'wrong one-time code' if knock.code else 'outside time window'}": knock.decisions
        for knock in r.knocks if knock.carrier != "sequence" for source in (knock.origin, BOB)
    })
    ports = sum(2 * knock.packets for knock in r.knocks if knock.carrier == "sequence")
    assert wait_until(lambda: counters(r.k.served)["packets.sequence"] >= before.get("packets.sequence", 0) + ports,
                      5, 0.2)
    r.nobody_granted_again(offset)
    assert "key sequence from" not in r.log()[offset:]


def test_a_fixed_sequence_copy_opens_for_whoever_sends_it(replays: Replays) -> None:
    """knockd-style [sequences.NAME]: the ports are the whole secret, and spa keeps
    no ledger for them (docs/carriers.md): every copy is a fresh knock, from bob too."""
    r = replays
    k = r.k
    pcap = k.served.directory / "office.pcap"
    door = "(tcp dst port 7000 or udp dst port 8000 or tcp dst port 9000)"
    with tapped(k.world, k.world.server, "client1", f"src host {ALICE} and {door}", pcap, 3):
        k.world.alice.run(["knock", "-d", "50", SERVER, "7000", "8000:udp", "9000"], check=False)
    opened = f"accepted sequence:office via sequence: {{}} tcp/22 for {GRANT} s"
    assert k.served.wait_log(opened.format(ALICE), 5), k.served.log()
    assert k.probe(k.bob) == "refused"
    assert k.bob.call("resend", pcap=str(pcap), source=BOB, destination=BOB_SERVER)["sent"] == 3
    assert k.served.wait_log(opened.format(BOB), 5), k.served.log()
    assert wait_until(lambda: k.probe(k.bob) == "open", 3, 0.05), "bob's copy of the fixed sequence did not open"
    assert [grant.who for grant in live_grants(k.served, k.world.server) if grant.address == BOB] == ["sequence:office"]
    assert k.probe(k.bob, port=2222) == "refused"  # the sequence opens tcp/22 only
    # And alice's own copy, once her grant is gone, is one more grant (no ledger, no duplicate).
    assert wait_until(lambda: k.probe() == "refused", GRANT + 3, 0.1)
    assert k.alice.call("resend", pcap=str(pcap))["sent"] == 3
    assert wait_until(lambda: k.served.log().count(opened.format(ALICE)) == 2, 5, 0.05), k.served.log()
