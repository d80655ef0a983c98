"""Capture a knock with tcpdump, and read what spa made of copies of it.

The replay tests (tests/e2e/test_replay.py) play an eavesdropper: tcpdump
on the server's link keeps one knock in a pcap file, an agent re-sends it
with scapy (agent op ``resend``), and these helpers read the verdicts back
the way an operator would: the grants ``spa status`` lists, the counters
``SIGUSR1`` makes the daemon log, and the log lines themselves.
"""

from __future__ import annotations

import re
import signal
import struct
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from spa.demo.served import SPA, Served

from .netns import Host, World, wait_until

PCAP_HEADER = 24  # the file header tcpdump writes once the capture is live
RECORD_HEADER = 16  # per packet: seconds, microseconds, captured length, original length


def pcap_count(path: Path) -> int:
    """Packets in a (possibly still growing) pcap file; a torn last record is not counted."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    if len(data) < PCAP_HEADER:
        return 0
    order = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    count, offset = 0, PCAP_HEADER
    while offset + RECORD_HEADER <= len(data):
        captured = struct.unpack(order + "I", data[offset + 8 : offset + 12])[0]
        offset += RECORD_HEADER + captured
        if offset > len(data):
            break
        count += 1
    return count


def empty_pcap(path: Path) -> Path:
    """A pcap file with no packets (Ethernet link type), e.g. to load scapy early."""
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    return path


@contextmanager
def tapped(world: World, host: Host, interface: str, expression: str, path: Path,
           packets: int, timeout: float = 5.0) -> Iterator[Path]:
    """tcpdump on ``interface`` of ``host`` into ``path`` while the body runs; after
    it, wait (bounded) for ``packets`` packets and stop tcpdump by its pid.

    ``-U`` writes each packet as it comes; ``-Z root`` keeps tcpdump from
    dropping to a user that could not write into the test's private directory.
    """
    process = world.spaces.popen(host, ["tcpdump", "-n", "-U", "-Z", "root", "-i", interface, "-w", str(path),
                                        expression], stdout=subprocess.DEVNULL)  # type: ignore[arg-type]
    try:
        if not wait_until(lambda: path.exists() and path.stat().st_size >= PCAP_HEADER
                          or process.poll() is not None, timeout, 0.02) or process.poll() is not None:
            raise RuntimeError(f"tcpdump did not start on {interface} ({expression})")
        yield path
        if not wait_until(lambda: pcap_count(path) >= packets, timeout, 0.02):
            raise RuntimeError(f"tcpdump kept {pcap_count(path)} of {packets} packets ({expression})")
    finally:
        world.spaces.kill(process)


@dataclass(frozen=True)
class LiveGrant:
    """One row of ``spa status``."""

    address: str
    port: str
    who: str


def live_grants(served: Served, host: Host) -> list[LiveGrant]:
    """The grants open right now, as ``spa status`` (run on the server) lists them."""
    result = host.run([*SPA, "status", "--config", str(served.config)], timeout=30)
    grants = []
    for line in result.stdout.splitlines():
        if line.startswith("server:"):
            break  # the counters follow the table
        words = line.split()
        if len(words) >= 4 and words[0] != "ADDRESS":
            grants.append(LiveGrant(words[0], words[1], " ".join(words[3:])))
    return grants


COUNTER = re.compile(r"([a-z_.]+)=(\d+)")


def counters(served: Served, timeout: float = 5.0) -> dict[str, int]:
    """The worker's counters now: SIGUSR1 makes it log them (``counters: a=1, b=2``)."""
    before = len(served.log())
    served.signal(signal.SIGUSR1)
    if not wait_until(lambda: "counters: " in served.log()[before:], timeout, 0.02):
        raise RuntimeError(f"no counters line after SIGUSR1:\n{served.log()[before:]}")
    line = next(text for text in served.log()[before:].splitlines() if "counters: " in text)
    return {name: int(value) for name, value in COUNTER.findall(line.split("counters: ", 1)[1])}
