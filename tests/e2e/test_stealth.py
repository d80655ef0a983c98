"""What a scanner learns about a server running ``spa serve``: nothing about spa.

nmap, from alice's namespace: a SYN scan of the protected ports and of the
knock ports (a fixed sequence's and the current one-time sequence's), a UDP
scan of the SPA datagram port; all ``filtered`` / ``open|filtered``, before
and after failed knocks. Other closed ports answer as closed ports do (RST,
ICMP port unreachable), and the DNS listener is an ordinary name server; that
is the picture docs/firewall.md ("What a scan sees") describes.

And the DNS answers: for a valid and an invalid token (compact, and one-time
code) they are the same bytes apart from the ID and the echoed question.
"""

from __future__ import annotations

import ipaddress
import sys
import time
import xml.etree.ElementTree as ElementTree

import pyotp
import pytest
import tomllib

from spa.client import tokens
from spa.core import otp
from spa.core.sequence import SequenceRule
from world import need_netns
from world.daemon import ZONE
from world.knocking import SERVER, Knocking, prepare
from world.netns import wait_until

pytestmark = pytest.mark.netns

ALICE = ipaddress.ip_address("10.77.1.2")
SERVER6 = "fd77:1::1"
STATICS = '\n[sequences.office]\nports = ["tcp/7000", "udp/8000", "tcp/9000"]\ntimeout = 5\nopen = ["tcp/22"]\n'
PROTECTED = (22, 2222)
CLOSED_TCP, CLOSED_UDP = 23, 9  # nothing listens there and spa does not guard them
# Fast but not lossy: one retransmission, and a host timeout as the outer bound.
NMAP = ["nmap", "-n", "-Pn", "-T4", "--max-retries", "1", "--host-timeout", "60s", "-oX", "-"]


@pytest.fixture
def knocking(request: pytest.FixtureRequest) -> Knocking:
    need_netns("nft", "nmap", "ping", "dig", "knock", libraries=("nftables",))
    k = prepare(request, "--totp", statics=STATICS)
    k.served.start()
    return k


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


def picture(k: Knocking, otp_ports: tuple[int, ...]) -> dict[str, dict[int, str]]:
    """Every scan, in an order that cannot complete a sequence by accident.

    The one-time sequence's middle port is scanned on its own, after the other
    two: the tracker matches the last hits of a source, and the middle port is
    never followed by the last one. The fixed sequence's UDP step comes after
    every TCP scan (docs/firewall.md, "What a scan sees").
    """
    first, middle, last = otp_ports
    return {
        "tcp": scan(k, "-sS", (*PROTECTED, 7000, 9000, CLOSED_TCP, 53)),
        "otp ends": scan(k, "-sS", (first, last)),
        "otp middle": scan(k, "-sS", (middle,)),
        "udp": scan(k, "-sU", (62201, 8000, CLOSED_UDP, 53)),
    }


def expected(otp_ports: tuple[int, ...]) -> dict[str, dict[int, str]]:
    first, middle, last = otp_ports
    return {
        "tcp": {22: "filtered", 2222: "filtered", 7000: "filtered", 9000: "filtered",
                CLOSED_TCP: "closed", 53: "open"},
        "otp ends": {first: "filtered", last: "filtered"},
        "otp middle": {middle: "filtered"},
        "udp": {62201: "open|filtered", 8000: "open|filtered", CLOSED_UDP: "closed", 53: "open"},
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


def test_nmap_sees_protected_and_knock_ports_as_filtered(knocking: Knocking) -> None:
    k = knocking
    otp_ports = tokens.otp_sequence(k.key, time.time(), SequenceRule())
    want = expected(otp_ports)
    assert picture(k, otp_ports) == want
    # The same over IPv6 (once: the UDP step first, so these hits cannot complete the fixed sequence).
    for kind, group, ports in (("-sU", "udp", (62201, 8000, CLOSED_UDP)),
                               ("-sS", "tcp", (*PROTECTED, 7000, 9000, CLOSED_TCP))):
        assert scan(k, kind, ports, SERVER6) == {port: want[group][port] for port in ports}, kind
    failed_knocks(k)
    assert picture(k, otp_ports) == want
    assert k.probe() == "dropped"
    assert "accepted" not in k.served.log(), "a scan or a failed knock opened something"


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
