"""Malformed floods at a running ``spa serve``: it stays up, counts them, and knocks still open.

The packets (tests/world/junk.py) lie about every length they carry, break
checksums, fragment, chain IPv6 extension headers and loop DNS compression
pointers. They go from alice's namespace straight onto the link through an
``AF_PACKET`` socket, so the kernel repairs nothing on the way out; DNS junk
goes to the real listener on port 53, and DNS-over-TCP connections that lie
about their length are held open meanwhile. Each packet's expected fate was
worked out from the design (docs/carriers.md, spa/intake/bpf.py): refused in
the kernel, refused by the parser, parsed but no knock, or DNS answered or
not; the counters must show at least what was sent of each.
"""

from __future__ import annotations

import ipaddress
import json
import re
import selectors
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from world import junk as junk_module
from world import need_netns
from world.daemon import ZONE, alive
from world.junk import Addresses, catalogue
from world.knocking import SERVER, Knocking, prepare
from world.netns import wait_until

from spa.client import tokens
from spa.daemon.dns_tcp import TCP_CLIENTS

pytestmark = pytest.mark.netns

ALICE = ipaddress.ip_address("10.77.1.2")
BOB = ipaddress.ip_address("10.77.2.2")
BOB_SERVER = "10.77.2.1"
JUNK = Path(junk_module.__file__)
CROWD = JUNK.with_name("crowd.py")
STATICS = '\n[sequences.office]\nports = ["tcp/7000", "udp/8000", "tcp/9000"]\ntimeout = 5\nopen = ["tcp/22"]\n'
# The flood: bounded in count and in time, paced so it measures robustness, not capacity.
FLOOD_COUNT = 18_000
FLOOD_SECONDS = 6.0
FLOOD_RATE = 3000.0
HELD_CONNECTIONS = 70  # more than the worker serves at once: the oldest make room
EVICT_ROUNDS = 30  # connections past the limit, each evicting a client whose query is on its way


def counters(k: Knocking) -> dict[str, int]:
    """SIGUSR1, then the counters of the newest ``counters:`` log line."""
    seen = k.served.log().count("counters: ")
    k.served.signal(signal.SIGUSR1)
    assert wait_until(lambda: k.served.log().count("counters: ") > seen, 10), k.served.log()
    line = k.served.log().rsplit("counters: ", 1)[1].splitlines()[0]
    return {name: int(value) for name, value in (item.split("=") for item in line.split(", "))}


def server_mac(k: Knocking) -> str:
    shown = k.world.server.run(["ip", "-j", "link", "show", "client1"]).stdout
    return str(json.loads(shown)[0]["address"])


def read_json_line(process: subprocess.Popen[str], timeout: float = 30) -> dict[str, int]:
    """The process's last stdout line, as JSON, once it has exited (its stdin is closed first)."""
    out, _ = process.communicate(timeout=timeout)
    return dict(json.loads(out.strip().splitlines()[-1]))


def wait_line(process: subprocess.Popen[str], prefix: str, timeout: float = 30) -> str:
    """The first stdout line starting with ``prefix``, or "" if none comes within ``timeout``."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while selector.select(max(0.0, deadline - time.monotonic())):
            line = process.stdout.readline()
            if line.startswith(prefix) or not line:
                return line
    return ""




@pytest.fixture
def knocking(request: pytest.FixtureRequest) -> Knocking:
    need_netns("nft", "ping", "dig", libraries=("nftables",))
    k = prepare(request, statics=STATICS)
    k.served.start()
    return k


def test_a_malformed_flood_is_counted_and_knocks_still_open(knocking: Knocking, tmp_path: Path) -> None:
    k = knocking
    supervisor, worker = k.served.process.pid, k.served.worker_pid()  # type: ignore[union-attr]
    before = counters(k)
    junk = catalogue(Addresses(str(ALICE), SERVER, "fd77:1::2", "fd77:1::1", 62201, 7000, ZONE))
    spec = tmp_path / "junk.json"
    junk_module.write(spec, junk)

    # DNS-over-TCP clients that lie about their length and stay, while the flood runs.
    holder = k.world.popen(k.world.alice, [sys.executable, str(JUNK), "hold", SERVER,
                                           "--connections", str(HELD_CONNECTIONS), "--seconds", "40"])
    assert wait_line(holder, "holding") == f"holding {HELD_CONNECTIONS}\n"
    flood = k.world.popen(k.world.alice, [
        sys.executable, str(JUNK), "flood", str(spec), "--device", "uplink", "--mac", server_mac(k),
        "--server", SERVER, "--count", str(FLOOD_COUNT), "--seconds", str(FLOOD_SECONDS), "--rate", str(FLOOD_RATE)])
    assert wait_line(flood, "started") == "started\n"

    # During the flood, from the flooding address itself: a ping knock opens.
    token = tokens.compact_token(k.key, int(time.time()), ALICE)
    k.alice_runs("ping", "-c", "1", "-W", "1", "-p", tokens.ping_pattern(token), SERVER)
    knocked_during_flood = flood.poll() is None
    assert k.opens(timeout=10), k.served.log()
    # ... and DNS over TCP still answers, with more lying clients held than it serves at once.
    over_tcp = k.world.bob.run(["dig", f"@{BOB_SERVER}", ZONE, "SOA", "+tcp", "+tries=1", "+time=3"], check=False)
    assert "status: NOERROR" in over_tcp.stdout, over_tcp.stdout + over_tcp.stderr
    assert knocked_during_flood, "the flood ended before the knock: raise FLOOD_SECONDS"

    sent = read_json_line(flood)
    assert sum(sent.values()) >= len(junk), sent  # at least one whole round
    held = read_json_line(holder)  # closing its stdin ends the held connections
    # The server dropped the connections whose frames ended at once or that half-closed,
    # and the oldest waiting ones whenever a new client needed a slot (dig's among them).
    closing = len(junk_module.CLOSING_LIES)
    assert held["opened"] == closing + HELD_CONNECTIONS
    assert held["closed by the server"] >= closing + HELD_CONNECTIONS + 1 - TCP_CLIENTS, held

    # Everything that reached the worker is counted, under the counter its fate names.
    expected: Counter[str] = Counter()
    for item in junk:
        if item.fate != junk_module.KERNEL:
            expected[item.fate] += sent.get(item.kind, 0)
    expected["packets.dns"] = expected[junk_module.DNS_SILENT] + expected[junk_module.DNS_ANSWERED]

    def delta(now: dict[str, int]) -> dict[str, int]:
        return {
            junk_module.UNPARSED: now.get("packets.unparsed", 0) - before.get("packets.unparsed", 0),
            # Empty knocks are "junk"; knock-shaped junk is refused by the gate as malformed.
            junk_module.JUNK: now.get("junk", 0) - before.get("junk", 0),
            junk_module.GATE: now.get("gate.malformed", 0) - before.get("gate.malformed", 0),
            junk_module.SEQUENCE: now.get("packets.sequence", 0) - before.get("packets.sequence", 0),
            junk_module.DNS_SILENT: now.get("dns.unanswered", 0) - before.get("dns.unanswered", 0),
            "packets.dns": now.get("packets.dns", 0) - before.get("packets.dns", 0),
        }

    def all_counted() -> bool:
        got = delta(counters(k))
        return all(got[name] >= expected[name] for name in got)

    assert wait_until(all_counted, 20, interval=0.5), (delta(counters(k)), dict(expected), k.served.log())
    after = counters(k)
    assert after.get("capture.dropped", 0) == 0, "the kernel dropped captured packets: the flood was too fast"

    # After the flood: a DNS knock from bob opens, and a plain query is answered.
    name = tokens.dns_name(tokens.compact_token(k.key, int(time.time()), BOB), ZONE)
    answer = k.world.bob.run(["dig", f"@{BOB_SERVER}", name, "+tries=1", "+time=3"], check=False).stdout
    assert "status: NOERROR" in answer, answer
    assert wait_until(lambda: k.probe(k.bob) == "open", 10, 0.05), k.served.log()
    soa = k.world.bob.run(["dig", f"@{BOB_SERVER}", ZONE, "SOA", "+tries=1", "+time=3"], check=False).stdout
    assert "status: NOERROR" in soa and "ANSWER: 1" in soa, soa

    # Junk opened nothing and is counted, not logged: a handful of lines for 18,000 packets.
    log = k.served.log()
    assert log.count("accepted ") == 2, log
    assert len(log.splitlines()) < 40, log

    # Same supervisor, same worker, both alive; nothing crashed or restarted.
    assert alive(supervisor) and alive(worker)
    assert k.served.worker_pid() == worker and k.served.log().count("serving ") == 1
    assert not re.search(r"worker (exited|failed)|Traceback", k.served.log()), k.served.log()
    status = json.loads((k.served.directory / "state" / "status.json").read_text())
    assert (status["supervisor"], status["worker"]) == (supervisor, worker)
    assert k.served.stop() == 0


def test_evicting_a_dns_tcp_client_whose_query_is_waiting_does_not_end_the_worker(knocking: Knocking) -> None:
    """Issue 13, HIGH 2. With every DNS-over-TCP slot taken, a new connection makes the
    worker close its least recently active client; that client's query, arriving in the
    same event batch, once met a closed socket (KeyError) and the worker died: a new
    worker is a new gate (lockouts and rate limits start afresh), and six deaths a
    minute made the supervisor give up and drop every grant."""
    k = knocking
    supervisor, worker = k.served.process.pid, k.served.worker_pid()  # type: ignore[union-attr]
    crowd = k.world.popen(k.world.alice, [sys.executable, str(CROWD), "evict", SERVER, "--zone", ZONE,
                                          "--clients", str(TCP_CLIENTS), "--rounds", str(EVICT_ROUNDS),
                                          "--seconds", "8"])
    assert wait_line(crowd, "ready") == "ready\n"
    summary = read_json_line(crowd)
    assert not re.search(r"worker (exited|failed)|Traceback", k.served.log()), k.served.log()
    assert summary["rounds"] == EVICT_ROUNDS, summary
    # Every round evicted someone (its newcomer took a slot) and answered the survivors.
    assert summary["closed by the server"] >= EVICT_ROUNDS and summary["answers"] > 0, summary
    assert alive(supervisor) and alive(worker)
    over_tcp = k.world.bob.run(["dig", f"@{BOB_SERVER}", ZONE, "SOA", "+tcp", "+tries=1", "+time=3"], check=False)
    assert "status: NOERROR" in over_tcp.stdout, over_tcp.stdout + over_tcp.stderr
    assert counters(k).get("errors.unexpected", 0) == 0
    assert k.served.worker_pid() == worker and k.served.stop() == 0
