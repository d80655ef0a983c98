"""The C junk sender (tests/bench/junk.c) builds, sends exactly what it says, and stops by itself.

Bounded runs only: a few thousand packets to a socket of our own on
loopback, and a few hundred spoofed packets inside a namespace world
captured with tcpdump and read back with scapy (every kind, every source,
every checksum right). The flood rates themselves are the benchmarks'
business (docs/benchmarks.md), never asserted here.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import junk_sender  # noqa: E402
from world import World, need, need_netns  # noqa: E402

ZONE = "knock.test"
pytestmark = pytest.mark.bench


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need(shutil.which("gcc") is not None, "needs gcc to build tests/bench/junk.c")
    return junk_sender.compile_to(tmp_path_factory.mktemp("junk") / "junk")


class Loopback:
    """A host whose commands run right here (the loopback tests need no namespace)."""

    @staticmethod
    def exec_argv(argv: list[str]) -> list[str]:
        return argv


class Processes:
    """Stands in for a world: kills what it adopted (by pid) at the end of the test."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[str]] = []

    def adopt(self, process: subprocess.Popen[str]) -> None:
        self.processes.append(process)

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)


def receive(sock: socket.socket, expected: int, timeout: float) -> list[bytes]:
    """Datagrams until ``expected`` arrived or nothing more came for ``timeout`` s."""
    sock.settimeout(timeout)
    found: list[bytes] = []
    while len(found) < expected:
        try:
            found.append(sock.recv(2048))
        except TimeoutError:
            break
    return found


def test_sends_exactly_its_count_of_each_udp_kind(program: Path) -> None:
    processes = Processes()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        flood = junk_sender.Flood("127.0.0.1", (f"spa:{port}", f"dns:{port}", f"random:{port}"), rate=200_000,
                                  seconds=10, count=3000, zone=ZONE, size=48)
        try:
            junk = junk_sender.Junk(processes, Loopback(), flood, program)
            tally = junk.finish(timeout=15)
        finally:
            processes.close()
        packets = receive(sock, 3001, 2.0)
    assert tally["sent"] == 3000 and tally["failed_calls"] == 0, tally
    assert tally["by_kind"] == {"spa": 1000, "dns": 1000, "random": 1000}
    assert len(packets) == 3000, "every datagram sent arrived, and no more"
    assert len(set(packets)) == 3000, "no two datagrams alike"
    # Sent in turn: spa, dns, random, spa, ... (one socket on loopback keeps the order).
    for index, packet in enumerate(packets):
        kind = ("spa", "dns", "random")[index % 3]
        if kind == "spa":
            assert 39 <= len(packet) <= 164
        elif kind == "random":
            assert len(packet) == 48
        else:
            from dnslib import DNSRecord

            query = DNSRecord.parse(packet)
            name = str(query.q.qname)
            assert len(query.questions) == 1 and name.endswith(f".{ZONE}.")
            assert len(name.split(".")[0]) in (26, 32)


def test_stops_at_its_time_bound(program: Path) -> None:
    processes = Processes()
    flood = junk_sender.Flood("127.0.0.1", ("random:9",), rate=2000, seconds=0.5, count=10_000_000)
    started = time.monotonic()
    try:
        tally = junk_sender.Junk(processes, Loopback(), flood, program).finish(timeout=10)
    finally:
        processes.close()
    assert time.monotonic() - started < 5
    assert 0.45 <= tally["seconds"] < 1.0
    assert 500 <= tally["sent"] <= 1100, "paced at 2000/s for 0.5 s"


def test_refuses_bad_options(program: Path) -> None:
    for argv, message in (
        (["--dest", "10.0.0.1", "--kind", "syn:22", "--rate", "1", "--seconds", "1", "--count", "1"], "need --spoof"),
        (["--dest", "nowhere", "--kind", "spa:1", "--rate", "1", "--seconds", "1", "--count", "1"], "IPv4"),
        (["--dest", "10.0.0.1", "--kind", "spa:70000", "--rate", "1", "--seconds", "1", "--count", "1"], "port"),
        (["--dest", "10.0.0.1", "--kind", "spa:1", "--rate", "1", "--seconds", "9999", "--count", "1"], "seconds"),
        (["--dest", "10.0.0.1", "--kind", "spa:1", "--rate", "1", "--seconds", "1"], "usage"),
    ):
        done = subprocess.run([str(program), *argv], capture_output=True, text=True, timeout=10, check=False)
        assert done.returncode == 2 and message in done.stderr, (argv, done.stderr)


@pytest.mark.netns
@pytest.mark.timeout(60)
def test_spoofed_mix_reaches_the_server_whole(program: Path, tmp_path: Path) -> None:
    """400 packets, 4 kinds, from 50 spoofed sources: captured on the server, all well-formed."""
    need_netns("tcpdump")
    from scapy.all import ICMP, IP, TCP, UDP, rdpcap
    from scapy.layers.dns import DNS

    capture = tmp_path / "junk.pcap"
    with World() as world:
        dump = subprocess.Popen(world.server.exec_argv(
            ["tcpdump", "-i", "client1", "-n", "-U", "-w", str(capture), "net", "10.99.0.0/16"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        world.adopt(dump)
        assert dump.stderr is not None
        assert "listening" in dump.stderr.readline()
        flood = junk_sender.Flood("10.77.1.1", ("spa:62201", "dns:53", "syn:20000-59999", "icmp"), rate=5000,
                                  seconds=10, count=400, spoof="10.99.0.0/16", sources=50, zone=ZONE)
        tally = junk_sender.Junk(world, world.alice, flood, program).finish(timeout=20)
        # Poll the capture (bounded) until all 400 are on disk, then stop tcpdump by its pid.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (not capture.exists() or len(rdpcap(str(capture))) < 400):
            time.sleep(0.1)
        dump.terminate()
        dump.wait(10)
    assert tally["sent"] == 400 and tally["sources"] == 50, tally
    packets = [packet for packet in rdpcap(str(capture)) if IP in packet]
    assert len(packets) == 400
    kinds = {"spa": 0, "dns": 0, "syn": 0, "icmp": 0}
    sources: dict[str, set[str]] = {}
    for packet in packets:
        ip = packet[IP]
        assert ip.dst == "10.77.1.1"
        clean = IP(bytes(ip))  # checksums recomputed from scratch by scapy must match ours
        clean.chksum = None
        clean.payload.chksum = None
        rebuilt = IP(bytes(clean))
        assert (rebuilt.chksum, rebuilt.payload.chksum) == (ip.chksum, ip.payload.chksum), ip.summary()
        if TCP in ip:
            assert ip[TCP].flags == "S" and 20000 <= ip[TCP].dport <= 59999
            kind = "syn"
        elif ICMP in ip:
            data = bytes(ip[ICMP].payload)
            assert ip[ICMP].type == 8 and len(data) == 56 and data[16:32] == data[32:48]
            kind = "icmp"
        elif ip[UDP].dport == 53:
            assert DNS in ip and str(ip[DNS].qd[0].qname, "ascii").endswith(f".{ZONE}.")
            kind = "dns"
        else:
            assert ip[UDP].dport == 62201 and 39 <= len(ip[UDP].payload) <= 164
            kind = "spa"
        kinds[kind] += 1
        sources.setdefault(ip.src, set()).add(kind)
    assert kinds == {"spa": 100, "dns": 100, "syn": 100, "icmp": 100}
    assert len(sources) == 50 and all(source.startswith("10.99.0.") for source in sources)
    assert all(len(seen) == 4 for seen in sources.values()), "each source sent every kind"
