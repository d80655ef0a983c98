"""``spa serve`` in the namespace world, knocked with the stock tools.

Every test: the protected port is dropped before the knock, opens for exactly
the knocking address after it, and nothing else opens. Tokens are built with
spa.client.tokens (the package's one token builder) and sent by ping, dig,
nslookup, knock and a plain UDP socket in alice's namespace.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import sys
import time
import tomllib
from pathlib import Path

import pyotp
import pytest
from world import need_netns
from world.daemon import ZONE
from world.knocking import SERVER, Knocking, prepare
from world.netns import wait_until

from spa.client import tokens
from spa.core import otp
from spa.core.sequence import SequenceRule
from spa.daemon import privdrop

pytestmark = pytest.mark.netns

ALICE = ipaddress.ip_address("10.77.1.2")


STATICS = '\n[sequences.office]\nports = ["tcp/7000", "udp/8000", "tcp/9000"]\ntimeout = 5\nopen = ["tcp/22"]\n'


@pytest.fixture
def prepared(request: pytest.FixtureRequest) -> Knocking:
    """Configured (alice's key with TOTP, a fixed sequence), not yet serving."""
    need_netns("nft", "ping", "dig", "nslookup", "knock", libraries=("nftables",))
    return prepare(request, "--totp", statics=STATICS)


@pytest.fixture
def knocking(prepared: Knocking) -> Knocking:
    prepared.served.start()
    return prepared


def totp_now(k: Knocking) -> str:
    record = tomllib.loads((k.served.directory / "keys" / "alice.toml").read_text())
    return pyotp.TOTP(record["totp_secret"]).now()


def test_ping_pattern_linux_layout(knocking: Knocking) -> None:
    k = knocking
    k.closed_before()
    token = tokens.compact_token(k.key, int(time.time()), ALICE)
    k.alice_runs("ping", "-c", "1", "-W", "1", "-p", tokens.ping_pattern(token), SERVER)
    assert k.opens(), k.served.log()
    k.only_alice()
    assert "accepted alice via icmp: 10.77.1.2 tcp/22 for 3 s" in k.served.log()


def test_ping_pattern_ipv6(knocking: Knocking) -> None:
    k = knocking
    alice6 = ipaddress.ip_address("fd77:1::2")
    assert k.alice.probe("fd77:1::1", 22) == "refused"
    token = tokens.compact_token(k.key, int(time.time()), alice6)
    k.alice_runs("ping", "-6", "-c", "1", "-W", "1", "-p", tokens.ping_pattern(token), "fd77:1::1")
    assert wait_until(lambda: k.alice.probe("fd77:1::1", 22) == "open", 3, 0.05), k.served.log()
    assert k.probe() == "refused", "an IPv6 knock opened IPv4"


def test_ping_pattern_freebsd_layout_crafted_with_scapy(knocking: Knocking) -> None:
    k = knocking
    k.closed_before()
    token = tokens.compact_token(k.key, int(time.time()), ALICE)
    # FreeBSD/macOS: an 8-byte timestamp, then the pattern from data[8] on.
    data = bytes(8) + (token * 4)[:48]
    script = (
        "import sys; from scapy.all import IP, ICMP, Raw, send; "
        f"send(IP(dst='{SERVER}')/ICMP(id=7, seq=1)/Raw(bytes.fromhex(sys.argv[1])), verbose=False)"
    )
    k.alice_runs(sys.executable, "-c", script, data.hex())
    assert k.opens(), k.served.log()
    k.only_alice()


def test_dns_compact_label_queried_directly_with_dig_and_nslookup(knocking: Knocking) -> None:
    k = knocking
    k.closed_before()
    name = tokens.dns_name(tokens.compact_token(k.key, int(time.time()), ALICE), ZONE)
    answer = k.alice_runs("dig", f"@{SERVER}", name, "+tries=1", "+time=2")
    assert "status: NOERROR" in answer and "flags: qr aa" in answer
    assert k.opens(), k.served.log()
    k.only_alice()
    # nslookup's A+AAAA pair and retries of a fresh token: one more grant, never a replay line.
    name = tokens.dns_name(tokens.compact_token(k.key, int(time.time()) + 1, ALICE), ZONE)
    k.alice_runs("nslookup", name, SERVER)
    assert k.served.wait_log("accepted alice via dns", 3)
    assert k.served.log().count("accepted alice via dns") == 2
    assert "replayed" not in k.served.log()


def test_dns_answers_over_tcp_and_at_the_apex(knocking: Knocking) -> None:
    k = knocking
    soa = k.alice_runs("dig", f"@{SERVER}", ZONE, "SOA", "+tcp", "+tries=1", "+time=2")
    assert "status: NOERROR" in soa and "SOA" in soa.split("ANSWER SECTION")[1]
    token = tokens.compact_token(k.key, int(time.time()), ALICE)
    k.alice_runs("dig", f"@{SERVER}", tokens.dns_name(token, ZONE), "+tcp", "+tries=1", "+time=2")
    assert k.opens(), k.served.log()


def test_udp_datagram(knocking: Knocking) -> None:
    k = knocking
    k.closed_before()
    packet = tokens.spa_datagram(k.key, int(time.time()), source=ALICE)
    k.alice_sends(packet)
    assert k.opens(), k.served.log()
    k.only_alice()


def test_knock_client_fixed_sequence(knocking: Knocking) -> None:
    k = knocking
    k.closed_before()
    k.alice_runs("knock", "-d", "50", SERVER, "7000", "8000:udp", "9000")
    assert k.opens(), k.served.log()
    k.only_alice()
    assert "accepted sequence:office via sequence" in k.served.log()


def test_knock_client_one_time_sequence(knocking: Knocking) -> None:
    k = knocking
    k.closed_before()
    ports = tokens.otp_sequence(k.key, time.time(), SequenceRule())
    k.alice_runs("knock", "-d", "50", SERVER, *map(str, ports))
    assert k.opens(), k.served.log()
    k.only_alice()


def test_wrong_and_stale_tokens_open_nothing(knocking: Knocking) -> None:
    k = knocking
    stale = tokens.compact_token(k.key, int(time.time()) - 600, ALICE)
    k.alice_runs("ping", "-c", "1", "-W", "1", "-p", tokens.ping_pattern(stale), SERVER)
    forged = bytes(16)
    k.alice_runs("ping", "-c", "1", "-W", "1", "-p", tokens.ping_pattern(forged), SERVER)
    bob_token = tokens.compact_token(k.key, int(time.time()), ipaddress.ip_address("10.77.2.2"))
    k.alice_runs("dig", f"@{SERVER}", tokens.dns_name(bob_token, ZONE), "+tries=1", "+time=2")
    k.alice_runs("knock", "-d", "50", SERVER, "7000", "9000", "8000:udp")  # wrong order
    assert k.served.wait_log("outside time window", 3), k.served.log()
    assert k.served.wait_log("bad authenticator", 3), k.served.log()
    time.sleep(0.3)
    assert k.probe() == "refused"
    assert "accepted" not in k.served.log()


def test_knock_ports_answer_as_unused_ports(knocking: Knocking) -> None:
    k = knocking
    # RST and ICMP port unreachable, as from a port nobody uses (stealth = "closed";
    # field by field in test_stealth.py), while spa still hears them (test_knock_client_*).
    assert k.probe(port=7000) == "refused" and k.probe(port=23) == "refused"
    assert k.probe(port=31337) == "refused"  # inside the one-time sequence range
    ask = ("import socket, sys; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.settimeout(1);"
           "s.connect((sys.argv[1], int(sys.argv[2]))); s.send(b'x')\n"
           "try:\n s.recv(1); print('answered')\n"
           "except ConnectionRefusedError: print('refused')\n"
           "except socket.timeout: print('silent')")
    answers = {port: k.alice_runs(sys.executable, "-c", ask, SERVER, str(port)).strip() for port in (62201, 8000, 9)}
    assert answers == {62201: "refused", 8000: "refused", 9: "refused"}


def test_worker_is_unprivileged(knocking: Knocking) -> None:
    pid = knocking.served.worker_pid()
    # The banner may come before the new worker has dropped root: wait for its first knock-ready state.
    assert wait_until(lambda: "NoNewPrivs:\t1" in Path(f"/proc/{pid}/status").read_text(), 5)
    status = Path(f"/proc/{pid}/status").read_text()
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert set(uids) == {"65534"}, uids  # nobody, real/effective/saved/fs
    assert privdrop.effective_capabilities(pid) == 0
    assert "NoNewPrivs:\t1" in status


def test_reload_adds_a_key_and_refuses_a_broken_config(knocking: Knocking) -> None:
    k = knocking
    bob = k.served.keygen("bob")
    k.served.signal(signal.SIGHUP)
    assert k.served.wait_log("reloaded", 5), k.served.log()
    token = tokens.compact_token(bob, int(time.time()), ipaddress.ip_address("10.77.2.2"))
    k.world.bob.run(["ping", "-c", "1", "-W", "1", "-p", tokens.ping_pattern(token), "10.77.2.1"], check=False)
    assert wait_until(lambda: k.probe(k.bob) == "open", 3, 0.05), k.served.log()

    k.served.edit("time_window = 60", "time_window = 0")
    k.served.signal(signal.SIGHUP)
    assert k.served.wait_log("reload refused", 5), k.served.log()
    assert "server.time_window" in k.served.log()
    token = tokens.compact_token(k.key, int(time.time()), ALICE)
    k.alice_runs("ping", "-c", "1", "-W", "1", "-p", tokens.ping_pattern(token), SERVER)
    assert k.opens(), "the old configuration stopped working after a refused reload"


def test_replay_state_survives_a_reload(knocking: Knocking) -> None:
    k = knocking
    token = tokens.compact_token(k.key, int(time.time()), ALICE)
    pattern = tokens.ping_pattern(token)
    k.alice_runs("ping", "-c", "1", "-W", "1", "-p", pattern, SERVER)
    assert k.opens()
    k.served.signal(signal.SIGHUP)
    assert k.served.wait_log("reloaded", 5)
    # From bob's address the same token is a replay, before and after the reload.
    k.world.bob.run(["ping", "-c", "1", "-W", "1", "-p", pattern, "10.77.2.1"], check=False)
    assert k.served.wait_log("replayed token", 3), k.served.log()
    assert k.probe(k.bob) == "refused"


def test_usr1_counters_status_and_clean_stop(knocking: Knocking) -> None:
    k = knocking
    token = tokens.compact_token(k.key, int(time.time()), ALICE)
    k.alice_runs("ping", "-c", "1", "-W", "1", "-p", tokens.ping_pattern(token), SERVER)
    assert k.opens()
    k.served.signal(signal.SIGUSR1)
    assert k.served.wait_log("counters: ", 3)
    assert "gate.accepted=1" in k.served.log()
    assert wait_until(lambda: (k.served.directory / "state" / "status.json").exists(), 7)
    status = json.loads((k.served.directory / "state" / "status.json").read_text())
    assert status["counts"]["gate.accepted"] == 1 and status["grants_applied"] == 1
    shown = k.served.spa("status", "--config", str(k.served.config), check=False)
    assert "gate.accepted" in shown.stdout
    assert k.served.stop() == 0
    assert "stopping" in k.served.log()
    tables = k.world.server.run(["nft", "list", "tables"]).stdout
    assert "spa_guard" in tables and "spa_grant" not in tables
    assert k.probe() == "refused", "the port opened when spa stopped"


def test_dns_extended_token_opens_the_address_it_names(knocking: Knocking) -> None:
    k = knocking
    # Bob's query stands in for a resolver: the source is not the address to open.
    name = tokens.dns_name(tokens.extended_token(k.key, int(time.time()), ALICE), ZONE)
    k.world.bob.run(["dig", "@10.77.2.1", name, "+tries=1", "+time=2"], check=False)
    assert k.opens(), k.served.log()
    assert k.probe(k.bob) == "refused"
    assert "accepted alice via dns from 10.77.2.2: 10.77.1.2 tcp/22" in k.served.log()


def test_dns_over_ipv6(knocking: Knocking) -> None:
    k = knocking
    alice6 = ipaddress.ip_address("fd77:1::2")
    name = tokens.dns_name(tokens.compact_token(k.key, int(time.time()), alice6), ZONE)
    answer = k.alice_runs("dig", "@fd77:1::1", name, "+tries=1", "+time=2")
    assert "status: NOERROR" in answer
    assert wait_until(lambda: k.alice.probe("fd77:1::1", 22) == "open", 3, 0.05), k.served.log()


def test_totp_code_by_dns_and_by_ping(knocking: Knocking) -> None:
    k = knocking
    code = totp_now(k)
    k.alice_runs("nslookup", f"{otp.to_label('alice', code)}.{ZONE}.", SERVER)
    assert k.opens(), k.served.log()
    assert k.served.wait_log("accepted alice via dns", 3)
    # The same code again, by ping, is the same one-time code: refused as a replay or a repeat.
    k.alice_runs("ping", "-c", "1", "-W", "1", "-p", otp.to_pattern(k.key.key_id, code), SERVER)
    time.sleep(0.3)
    assert k.served.log().count("accepted alice") == 1


def test_ping_totp_pattern(knocking: Knocking) -> None:
    k = knocking
    k.closed_before()
    k.alice_runs("ping", "-c", "1", "-W", "1", "-p", otp.to_pattern(k.key.key_id, totp_now(k)), SERVER)
    assert k.opens(), k.served.log()
    k.only_alice()


def test_silenced_echo_replies_still_hear_the_knock(prepared: Knocking) -> None:
    k = prepared
    k.served.edit("silence_replies = false", "silence_replies = true")
    sysctl = ["sysctl", "-n", "net.ipv4.icmp_echo_ignore_all"]
    before = k.world.server.run(sysctl).stdout.strip()
    k.served.start()
    assert k.world.server.run(sysctl).stdout.strip() == "1"
    token = tokens.compact_token(k.key, int(time.time()), ALICE)
    result = k.world.alice.run(["ping", "-c", "1", "-W", "1", "-p", tokens.ping_pattern(token), SERVER], check=False)
    assert result.returncode != 0, "the server answered a ping although replies are silenced"
    assert k.opens(), k.served.log()
    assert k.served.stop() == 0
    assert k.world.server.run(sysctl).stdout.strip() == before


def test_sniff_mode_hears_queries_another_server_answers(prepared: Knocking) -> None:
    k = prepared
    k.served.edit('mode = "serve"', 'mode = "sniff"')
    # The "other DNS server": answers every query with REFUSED, knows nothing of spa.
    other = (
        "import socket\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind(('0.0.0.0',53)); print('ready',flush=True)\n"
        "while True:\n"
        " q,a=s.recvfrom(512); s.sendto(q[:2]+bytes([0x81,0x05])+q[4:],a)\n"
    )
    process = k.world.popen(k.world.server, [sys.executable, "-c", other])
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    k.served.start()
    name = tokens.dns_name(tokens.compact_token(k.key, int(time.time()), ALICE), ZONE)
    answer = k.alice_runs("dig", f"@{SERVER}", name, "+tries=1", "+time=2")
    assert "status: REFUSED" in answer  # the other server's answer, not spa's
    assert k.opens(), k.served.log()
