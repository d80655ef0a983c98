"""What a scanner learns about a server running ``spa serve``: nothing about spa.

Under the default ``stealth = "closed"``, nmap from alice's namespace (a SYN
scan of the protected ports and of the knock ports: a fixed sequence's and
the current one-time sequence's; a UDP scan of the SPA datagram port and the
fixed sequence's UDP step) sees every one of them ``closed``, exactly as the
unused ports it scans alongside, over IPv4 and IPv6, before and after failed
knocks. At the packet level (scapy, tests/world/raw_probe.py) the RST and
the ICMP/ICMPv6 port unreachable from a guarded port are the kernel's own
for an unused port, field for field, and the kernel's ICMP rate limit counts
both alike. Knocks are still heard and a granted address still connects.

With ``stealth = "drop"`` on a host whose own input policy drops, every
probed port is ``filtered`` (``open|filtered`` for UDP), spa's and unused
ones alike; with the default on such a host, spa warns at start. That is the
picture docs/firewall.md ("What a scan sees") describes.

And the DNS answers: for a valid and an invalid token (compact, and one-time
code) they are the same bytes apart from the ID and the echoed question.
"""

from __future__ import annotations

import ipaddress
import json
import sys
import time
import tomllib
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import pyotp
import pytest
from world import need_netns
from world.daemon import ZONE
from world.knocking import SERVER, Knocking, prepare
from world.netns import wait_until

from spa.client import tokens
from spa.core import otp
from spa.core.sequence import SequenceRule

pytestmark = pytest.mark.netns

ALICE = ipaddress.ip_address("10.77.1.2")
SERVER6 = "fd77:1::1"
STATICS = '\n[sequences.office]\nports = ["tcp/7000", "udp/8000", "tcp/9000"]\ntimeout = 5\nopen = ["tcp/22"]\n'
PROTECTED = (22, 2222)  # both have a listener (the echo service): only the guard keeps them shut
CLOSED_TCP, CLOSED_UDP = 23, 9  # nothing listens there and spa does not guard them
ONE_TIME_RANGE_PORT = 31337  # inside the one-time sequence range (20000-59999): a knock port
# Fast but not lossy: one retransmission, and a host timeout as the outer bound.
NMAP = ["nmap", "-n", "-Pn", "-T4", "--max-retries", "1", "--host-timeout", "60s", "-oX", "-"]
RAW_PROBE = Path(__file__).resolve().parents[1] / "world" / "raw_probe.py"
# The server's own default-drop input policy, as an administrator would write
# it (docs/deploy.md): replies, loopback, neighbour discovery, the DNS it
# serves, and what spa marks.
HOST_DROPS = """
table inet host {
  chain input {
    type filter hook input priority 10; policy drop;
    ct state established,related accept
    iif lo accept
    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept
    meta l4proto { tcp, udp } th dport 53 accept
    meta mark & 0x53500000 == 0x53500000 accept
  }
}
"""


@pytest.fixture
def prepared(request: pytest.FixtureRequest) -> Knocking:
    need_netns("nft", "nmap", "ping", "dig", "knock", libraries=("nftables",))
    return prepare(request, "--totp", statics=STATICS)


@pytest.fixture
def knocking(prepared: Knocking) -> Knocking:
    prepared.served.start()
    return prepared


def host_drops(k: Knocking, tmp_path: Path) -> None:
    """Give the server a default-drop input policy of its own."""
    script = tmp_path / "host.nft"
    script.write_text(HOST_DROPS)
    k.world.server.run(["nft", "-f", str(script)])


def scan(k: Knocking, kind: str, ports: tuple[int, ...], target: str = SERVER) -> dict[int, str]:
    """nmap ``kind`` (-sS or -sU) of ``ports`` from alice: each port's state."""
    six = ["-6"] if ":" in target else []
    argv = [*NMAP, *six, kind, "-p", ",".join(map(str, ports)), target]
    result = k.world.alice.run(argv, check=False, timeout=90)
    assert result.returncode == 0, result.stderr
    found = {int(p.get("portid", 0)): p.find("state").get("state", "")  # type: ignore[union-attr]
             for p in ElementTree.fromstring(result.stdout).iter("port")}
    assert set(found) == set(ports), result.stdout
    return found


def picture(k: Knocking, otp_ports: tuple[int, ...], target: str = SERVER) -> dict[str, dict[int, str]]:
    """Every scan, in an order that cannot complete a sequence by accident.

    The one-time sequence's middle port is scanned on its own, after the other
    two: the tracker matches the last hits of a source, and the middle port is
    never followed by the last one. The fixed sequence's UDP step comes after
    every TCP scan (docs/firewall.md, "What a scan sees").
    """
    first, middle, last = otp_ports
    return {
        "tcp": scan(k, "-sS", (*PROTECTED, 7000, 9000, CLOSED_TCP, 53), target),
        "otp ends": scan(k, "-sS", (first, last), target),
        "otp middle": scan(k, "-sS", (middle,), target),
        "udp": scan(k, "-sU", (62201, 8000, CLOSED_UDP, 53), target),
    }


def expected(otp_ports: tuple[int, ...], tcp: str, udp: str) -> dict[str, dict[int, str]]:
    """The picture when every closed port, spa's and unused ones, shows ``tcp`` / ``udp``."""
    first, middle, last = otp_ports
    return {
        "tcp": {22: tcp, 2222: tcp, 7000: tcp, 9000: tcp, CLOSED_TCP: tcp, 53: "open"},
        "otp ends": {first: tcp, last: tcp},
        "otp middle": {middle: tcp},
        "udp": {62201: udp, 8000: udp, CLOSED_UDP: udp, 53: "open"},
    }


def failed_knocks(k: Knocking) -> None:
    """A forged ping token, a stale one, a junk DNS token, a junk datagram, a wrong-order sequence."""
    forged = bytes(16)
    stale = tokens.compact_token(k.key, int(time.time()) - 600, ALICE)
    for token in (forged, stale):
        k.alice_runs("ping", "-c", "1", "-W", "1", "-p", tokens.ping_pattern(token), SERVER)
    k.alice_runs("dig", f"@{SERVER}", tokens.dns_name(bytes(range(16)), ZONE), "+tries=1", "+time=2")
    send = "import socket,sys; socket.socket(socket.AF_INET,socket.SOCK_DGRAM).sendto(bytes(80),(sys.argv[1],62201))"
    k.alice_runs(sys.executable, "-c", send, SERVER)
    k.alice_runs("knock", "-d", "50", SERVER, "7000", "9000", "8000:udp")
    assert k.served.wait_log("outside time window", 5), k.served.log()


def whole_picture(k: Knocking, tcp: str, udp: str) -> None:
    """IPv4 and IPv6, before and after failed knocks: every closed port shows ``tcp`` / ``udp``."""
    otp_ports = tokens.otp_sequence(k.key, time.time(), SequenceRule())
    want = expected(otp_ports, tcp, udp)
    for round_ in ("before failed knocks", "after failed knocks"):
        assert picture(k, otp_ports) == want, f"IPv4, {round_}"
        assert picture(k, otp_ports, SERVER6) == want, f"IPv6, {round_}"
        if round_ == "before failed knocks":
            failed_knocks(k)
    assert "accepted" not in k.served.log(), "a scan or a failed knock opened something"


def test_nmap_sees_protected_and_knock_ports_as_closed_as_unused_ones(knocking: Knocking) -> None:
    k = knocking
    whole_picture(k, tcp="closed", udp="closed")
    assert k.probe() == "refused" and k.alice.probe(SERVER6, 22) == "refused"


def raw(k: Knocking, *argv: str) -> Any:
    """tests/world/raw_probe.py in alice's namespace; its JSON answer."""
    result = k.world.alice.run([sys.executable, str(RAW_PROBE), *argv], check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_refusals_are_the_packets_an_unused_port_sends(knocking: Knocking) -> None:
    """RST and port unreachable from guarded ports against an unused port, field by field.

    Left out of the comparison, as docs/firewall.md says: the IPv4 ID of an
    ICMP error (a counter, different for any two packets) and the IPv6 flow
    label of a RST (the kernel's own RST gets an automatic label, nf_reject's
    has none). The probes carry TOS 0: the kernel reflects a probe's DSCP in
    its RST, nf_reject does not (docs/firewall.md, "Residual differences").
    """
    k = knocking
    for target in (SERVER, SERVER6):
        # UDP first: 8000 and then 7000 is no step of the fixed sequence (7000, 8000, 9000).
        errors = raw(k, "udp", target, "62201", "8000", str(ONE_TIME_RANGE_PORT), str(CLOSED_UDP))
        unused = errors.pop(str(CLOSED_UDP))
        assert unused is not None, f"{target}: no ICMP error from an unused UDP port"
        assert (unused["type"], unused["code"]) == ((3, 3) if target == SERVER else (1, 4))
        assert unused["quote_is_probe"] and unused["to_probe_port"], unused
        for port, answer in errors.items():
            assert answer is not None, f"{target} udp/{port}: no answer"
            assert {**answer, "id": None} == {**unused, "id": None}, f"{target} udp/{port}"

        resets = raw(k, "tcp", target, *map(str, PROTECTED), "7000", str(ONE_TIME_RANGE_PORT), str(CLOSED_TCP))
        unused = resets.pop(str(CLOSED_TCP))
        syn, ack = unused["syn"], unused["ack"]
        # What the kernel's RST for an unused port looks like: to a SYN, RST+ACK acking
        # the SYN and its data with seq 0; to an ACK, a bare RST whose seq is that ACK.
        assert (syn["flags"], syn["seq"], syn["ack_is_probe_end"], syn["window"]) == ("RA", 0, True, 0), syn
        assert (ack["flags"], ack["ack"], ack["seq_is_probe_ack"], ack["window"]) == ("R", 0, True, 0), ack
        for port, answers in resets.items():
            for probe in ("syn", "ack"):
                assert answers[probe] is not None, f"{target} tcp/{port} {probe}: no answer"
                assert {**answers[probe], "fl": None} == {**unused[probe], "fl": None}, f"{target} tcp/{port} {probe}"
    assert "accepted" not in k.served.log()


@pytest.mark.parametrize(("target", "rest"), [(SERVER, "sleep:7"), (SERVER6, "sleep:2")])
def test_icmp_rate_limit_counts_guarded_and_unused_ports_alike(knocking: Knocking, target: str, rest: str) -> None:
    """Both go through icmp_send/icmpv6_send, so one per-peer token bucket limits both.

    100 datagrams at once to a port, then (after ``rest``, which refills the
    bucket) 100 to the other, then at once 100 to the first again. The
    kernel's defaults: net.ipv4.icmp_ratelimit 1000 ms, scaled down to
    250 ms for an IPv6 /64 peer, each with a burst of 6 tokens. The first
    two bursts get the same count; the third finds the bucket the second
    drained empty, whichever port it was: the same limiter, not just the
    same rate.
    """
    k = knocking
    for first, second in ((CLOSED_UDP, 62201), (62201, CLOSED_UDP)):
        errors = raw(k, "burst", target, "100", str(first), rest, str(second), str(first))["errors"]
        assert 1 <= errors[0] < 100, f"no rate limit seen: {errors}"
        assert abs(errors[1] - errors[0]) <= 1, f"udp/{first} then udp/{second}: {errors}"
        assert errors[2] <= 1, f"udp/{second}'s errors did not drain the bucket udp/{first} uses: {errors}"
        raw(k, "burst", target, "0", rest)  # refill before the next round


def test_under_closed_knocks_are_heard_and_a_granted_address_connects(knocking: Knocking) -> None:
    """Each knock goes to a port that answers it as closed; spa hears it anyway."""
    k = knocking
    k.closed_before()
    packet = tokens.spa_datagram(k.key, int(time.time()), source=ALICE)
    k.alice_sends(packet)
    assert k.opens(), k.served.log()
    k.only_alice()
    assert wait_until(lambda: k.probe() == "refused", 6, 0.1), "the grant did not end"
    k.alice_runs("knock", "-d", "50", SERVER, "7000", "8000:udp", "9000")
    assert k.opens(), k.served.log()
    assert "accepted sequence:office via sequence" in k.served.log()
    assert wait_until(lambda: k.probe() == "refused", 6, 0.1), "the grant did not end"
    k.alice_runs("knock", "-d", "50", SERVER, *map(str, tokens.otp_sequence(k.key, time.time(), SequenceRule())))
    assert k.opens(), k.served.log()
    k.only_alice()


def test_drop_on_a_default_drop_host_shows_every_port_filtered(prepared: Knocking, tmp_path: Path) -> None:
    k = prepared
    k.served.edit('stealth = "closed"', 'stealth = "drop"')
    host_drops(k, tmp_path)
    k.served.start()
    whole_picture(k, tcp="filtered", udp="open|filtered")
    assert k.probe() == "dropped"
    assert "stealth" not in k.served.log(), "a warning where drop is the right choice"
    # The host's policy accepts what spa marks: a granted address still connects.
    packet = tokens.spa_datagram(k.key, int(time.time()), source=ALICE)
    k.alice_sends(packet)
    assert k.opens(), k.served.log()
    assert k.probe(k.bob) == "dropped"


def test_closed_on_a_default_drop_host_is_warned_about_at_start(prepared: Knocking, tmp_path: Path) -> None:
    k = prepared
    host_drops(k, tmp_path)
    k.served.start()
    assert k.served.wait_log('stealth = "closed", but inet host input drops by default', 5), k.served.log()
    assert 'set [firewall] stealth = "drop"' in k.served.log()


# A DNS query from alice's namespace; prints each answer's bytes in hex.
QUERY = """
import random, socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(3)
for name in sys.argv[2:]:
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\\0\\0\\1\\0\\1"
    sock.sendto(random.randbytes(2) + bytes.fromhex("01000001000000000000") + question, (sys.argv[1], 53))
    print(sock.recv(4096).hex(), len(question))
"""


def blanked(line: str) -> bytes:
    """An answer with its ID and echoed question zeroed."""
    answer_hex, question_length = line.split()
    answer = bytearray(bytes.fromhex(answer_hex))
    answer[0:2] = bytes(2)
    answer[12:12 + int(question_length)] = bytes(int(question_length))
    return bytes(answer)


def test_dns_answers_are_the_same_bytes_for_valid_and_invalid_tokens(knocking: Knocking) -> None:
    k = knocking
    now = int(time.time())
    valid = tokens.dns_name(tokens.compact_token(k.key, now, ALICE), ZONE)
    invalid = tokens.dns_name(tokens.compact_token(k.key, now, ipaddress.ip_address("10.77.2.2")), ZONE)
    secret = tomllib.loads((k.served.directory / "keys" / "alice.toml").read_text())["totp_secret"]
    code = pyotp.TOTP(secret).now()
    wrong = f"{(int(code) + 500_000) % 1_000_000:06d}"
    good_code, bad_code = (f"{otp.to_label('alice', digits)}.{ZONE}." for digits in (code, wrong))
    assert len(valid) == len(invalid) and len(good_code) == len(bad_code)
    shown = k.alice_runs(sys.executable, "-c", QUERY, SERVER, valid, invalid, good_code, bad_code).split("\n")
    answers = [blanked(line) for line in shown if line.strip()]
    assert len(answers) == 4, shown
    assert answers[0] == answers[1], "a valid token's answer differs from an invalid one's"
    assert answers[2] == answers[3], "a valid code's answer differs from a wrong one's"
    # The valid ones really were valid: both were accepted; the invalid ones were refused.
    assert wait_until(lambda: k.served.log().count("accepted alice via dns") == 2, 5), k.served.log()
    assert k.served.wait_log("bad authenticator", 3), k.served.log()
    assert k.served.wait_log("wrong one-time code", 3), k.served.log()


def test_odd_packets_get_what_an_unused_port_or_the_bare_kernel_gives(knocking: Knocking) -> None:
    """Found by an outside probe of the guard: a UDP length field under 8 got
    port unreachable from guarded ports only (the kernel drops it), and an
    empty packet of another protocol got port unreachable instead of the
    kernel's protocol unreachable (IPv6: parameter problem, unrecognised
    next header)."""
    k = knocking
    for target in (SERVER, SERVER6):
        short = raw(k, "shortudp", target, "62201", "8000", str(ONE_TIME_RANGE_PORT), str(CLOSED_UDP))
        assert short == dict.fromkeys(short, None), f"{target}: {short}"
    assert raw(k, "proto", SERVER, "253", "254") == {"253": [3, 2], "254": [3, 2]}
    assert raw(k, "proto", SERVER6, "253") == {"253": [4, 1]}
