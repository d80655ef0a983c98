"""Malformed packets for the hostile e2e tests, and the sender that fires them.

Two halves:

* :func:`catalogue` (test process, root namespace) crafts the packets with
  scapy, or by hand where scapy would repair the lie: truncated and lying
  IPv4/IPv6 headers, lying UDP and TCP lengths, bad checksums, fragments,
  empty knocks, IPv6 extension-header chains, and DNS messages with
  compression loops, oversized labels and names, wrong counts and broken
  EDNS. Each :class:`Junk` says where it should end up (``fate``), so a
  test can check that the daemon counted what reached it.
* ``python junk.py flood|hold ...`` (inside a client namespace) sends them:
  IP packets through an ``AF_PACKET`` socket straight onto the link (the
  kernel would fix lengths and checksums of anything sent through
  ``IP_HDRINCL``), DNS messages through an ordinary UDP socket, and held
  DNS-over-TCP connections whose length prefixes lie. Every loop is bounded
  in count and time; the JSON summary on stdout says what was sent.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD

# Where a packet should end up in the daemon (names match the worker's counters).
UNPARSED = "packets.unparsed"  # passes the kernel filter, refused by the parser
JUNK = "junk"  # parsed, then no knock in it (empty echo, empty datagram)
GATE = "gate"  # a knock-shaped payload the gate refuses as malformed
DNS_SILENT = "dns.unanswered"  # not DNS we answer: no reply at all
DNS_ANSWERED = "dns.answered"  # FORMERR, BADVERS, REFUSED or an empty NOERROR
KERNEL = "kernel"  # refused by the BPF filter or the kernel's own checks; never reaches Python
# A SYN to a knock port with a bad checksum is heard by the capture (which
# comes before the kernel's checksum check) and counted as a sequence packet.
SEQUENCE = "packets.sequence"


@dataclass(frozen=True)
class Junk:
    """One crafted packet: ``channel`` is ``ipv4``/``ipv6`` (raw on the link) or ``dns`` (UDP payload)."""

    kind: str
    channel: str
    data: bytes
    fate: str


@dataclass(frozen=True)
class Addresses:
    client4: str
    server4: str
    client6: str
    server6: str
    udp_port: int  # the SPA datagram port
    tcp_knock: int  # a port of a knock sequence
    zone: str


def catalogue(a: Addresses) -> list[Junk]:
    """Every malformed packet of the flood, IPv4, IPv6 and DNS."""
    return _ipv4(a) + _ipv6(a) + _dns(a.zone)


def _ipv4(a: Addresses) -> list[Junk]:
    from scapy.compat import raw
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.packet import Raw

    ip = IP(src=a.client4, dst=a.server4)
    udp = raw(ip / UDP(sport=40000, dport=a.udp_port) / Raw(b"x" * 40))
    echo = raw(ip / ICMP(type=8, id=1, seq=1) / Raw(bytes(range(56))))
    syn = raw(ip / TCP(sport=40001, dport=a.tcp_knock, flags="S"))

    def total(packet: bytes, length: int) -> bytes:
        return packet[:2] + struct.pack("!H", length) + packet[4:]

    def ihl(packet: bytes, words: int) -> bytes:
        return bytes([0x40 | words]) + packet[1:]

    return [
        Junk("ipv4 header cut at 12 bytes", "ipv4", udp[:12], KERNEL),
        Junk("ipv4 header cut at 19 bytes", "ipv4", udp[:19], KERNEL),
        Junk("ipv4 one byte", "ipv4", b"\x45", KERNEL),
        Junk("ipv4 ihl 15 on a short packet", "ipv4", ihl(udp, 15)[:40], KERNEL),
        Junk("ipv4 ihl 4 (below the minimum)", "ipv4", ihl(udp, 4), KERNEL),
        Junk("ipv4 total length past the end", "ipv4", total(udp, len(udp) + 100), UNPARSED),
        Junk("ipv4 total length inside the header", "ipv4", total(udp, 10), UNPARSED),
        Junk("ipv4 total length cuts the echo header", "ipv4", total(echo, 24), UNPARSED),
        Junk("udp length past the end", "ipv4",
             raw(ip / UDP(sport=40000, dport=a.udp_port, len=400) / Raw(b"x" * 40)), UNPARSED),
        Junk("udp length below its header", "ipv4",
             raw(ip / UDP(sport=40000, dport=a.udp_port, len=4) / Raw(b"x" * 40)), UNPARSED),
        Junk("tcp data offset past the end", "ipv4",
             raw(ip / TCP(sport=40001, dport=a.tcp_knock, flags="S", dataofs=15)), UNPARSED),
        Junk("tcp data offset below its header", "ipv4",
             raw(ip / TCP(sport=40001, dport=a.tcp_knock, flags="S", dataofs=2)), UNPARSED),
        Junk("zero-length udp to the spa port", "ipv4", raw(ip / UDP(sport=40000, dport=a.udp_port)), JUNK),
        Junk("empty echo request", "ipv4", raw(ip / ICMP(type=8, id=1, seq=2)), JUNK),
        Junk("echo with 31 bytes (one short of a token)", "ipv4",
             raw(ip / ICMP(type=8, id=1, seq=3) / Raw(b"\x00" * 31)), JUNK),
        Junk("bad ip checksum, echo of junk", "ipv4",
             raw(IP(src=a.client4, dst=a.server4, chksum=0x1234) / ICMP(type=8) / Raw(bytes(range(56)))), GATE),
        Junk("bad udp checksum, datagram-sized junk", "ipv4",
             raw(ip / UDP(sport=40000, dport=a.udp_port, chksum=0xDEAD) / Raw(bytes(range(80)))), GATE),
        Junk("ipv4 first fragment to the spa port", "ipv4",
             raw(IP(src=a.client4, dst=a.server4, flags="MF", id=77) / UDP(sport=40000, dport=a.udp_port)
                 / Raw(b"y" * 64))[:60], KERNEL),
        Junk("ipv4 middle fragment, overlapping", "ipv4",
             raw(IP(src=a.client4, dst=a.server4, flags="MF", frag=1, id=77, proto=17) / Raw(b"z" * 48)), KERNEL),
        Junk("ipv4 last fragment at the largest offset", "ipv4",
             raw(IP(src=a.client4, dst=a.server4, frag=8191, id=78, proto=17) / Raw(b"z" * 16)), KERNEL),
        Junk("syn with a bad checksum to a knock port", "ipv4", syn[:36] + b"\xde\xad" + syn[38:], SEQUENCE),
        Junk("half-open: a bare syn to the dns port", "ipv4",
             raw(ip / TCP(sport=40002, dport=53, flags="S", seq=1)), KERNEL),
        Junk("ipv4 unknown protocol 253", "ipv4", raw(IP(src=a.client4, dst=a.server4, proto=253) / Raw(b"q" * 20)),
             KERNEL),
    ]


def _ipv6(a: Addresses) -> list[Junk]:
    from scapy.compat import raw
    from scapy.layers.inet import UDP
    from scapy.layers.inet6 import (
        ICMPv6EchoRequest,
        IPv6,
        IPv6ExtHdrDestOpt,
        IPv6ExtHdrFragment,
        IPv6ExtHdrHopByHop,
        IPv6ExtHdrRouting,
    )
    from scapy.packet import Raw

    ip6 = IPv6(src=a.client6, dst=a.server6)
    udp = UDP(sport=40000, dport=a.udp_port) / Raw(b"x" * 40)
    udp_packet = raw(ip6 / udp)

    def payload_length(packet: bytes, length: int) -> bytes:
        return packet[:4] + struct.pack("!H", length) + packet[6:]

    chain = IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting(type=0, segleft=0) / IPv6ExtHdrFragment(m=1)
    ten = ip6
    for _ in range(10):
        ten = ten / IPv6ExtHdrDestOpt()
    truncated_ext = raw(ip6 / IPv6ExtHdrDestOpt(len=10) / udp)[:64]
    return [
        Junk("ipv6 header cut at 39 bytes", "ipv6", udp_packet[:39], KERNEL),
        Junk("ipv6 payload length past the end", "ipv6", payload_length(udp_packet, 400), UNPARSED),
        Junk("ipv6 payload length 0 (no jumbo option)", "ipv6", payload_length(udp_packet, 0), UNPARSED),
        Junk("ipv6 udp with a zero checksum", "ipv6",
             raw(ip6 / UDP(sport=40000, dport=a.udp_port, chksum=0) / Raw(bytes(range(80)))), GATE),
        Junk("hop-by-hop then echo", "ipv6", raw(ip6 / IPv6ExtHdrHopByHop() / ICMPv6EchoRequest(data=b"a" * 40)), KERNEL),
        Junk("routing type 0 then udp", "ipv6",
             raw(ip6 / IPv6ExtHdrRouting(type=0, addresses=[a.server6], segleft=1) / udp), KERNEL),
        Junk("destination options then udp", "ipv6", raw(ip6 / IPv6ExtHdrDestOpt() / udp), KERNEL),
        Junk("fragment header then udp", "ipv6", raw(ip6 / IPv6ExtHdrFragment(id=5, m=1) / udp), KERNEL),
        Junk("hop-by-hop, dest, routing, fragment chain", "ipv6", raw(ip6 / chain / udp), KERNEL),
        Junk("ten destination-options headers", "ipv6", raw(ten / udp), KERNEL),
        Junk("extension header running past the end", "ipv6", payload_length(truncated_ext, len(truncated_ext) - 40),
             KERNEL),
        Junk("hop-by-hop not first", "ipv6", raw(ip6 / IPv6ExtHdrDestOpt() / IPv6ExtHdrHopByHop() / udp), KERNEL),
    ]


def _name(*labels: bytes) -> bytes:
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"


def _header(ident: int, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack(">HHHHHH", ident, flags, qd, an, ns, ar)


def _dns(zone: str) -> list[Junk]:
    labels = tuple(part.encode() for part in zone.split("."))
    question = _name(b"www", *labels) + b"\x00\x01\x00\x01"  # A IN
    a_record = b"\x00\x01\x00\x01\x00\x00\x00\x05\x00\x04\x0a\x00\x00\x01"  # type, class, ttl, rdlength 4, rdata
    opt = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"  # root owner, OPT, 1232, no flags, rdlength 0
    after_question = 12 + len(question)  # where the first record's owner starts
    self_pointer = struct.pack(">H", 0xC000 | after_question)
    cycle_first = struct.pack(">H", 0xC000 | (after_question + 2 + len(a_record)))  # points at the second record
    cycle_second = struct.pack(">H", 0xC000 | after_question)  # points back at the first
    long_label = bytes([63]) + b"a" * 63
    return [
        Junk("dns 5-byte message", "dns", b"\x12\x34\x01\x00\x00", DNS_SILENT),
        Junk("dns header cut at 11 bytes", "dns", _header(1)[:11], DNS_SILENT),
        Junk("dns header only, question missing", "dns", _header(2), DNS_SILENT),
        Junk("dns a response (QR set)", "dns", _header(3, flags=0x8180) + question, DNS_SILENT),
        Junk("dns self-pointing question name", "dns", _header(4) + b"\xc0\x0c\x00\x01\x00\x01", DNS_SILENT),
        Junk("dns record owner pointing at itself", "dns",
             _header(5, an=1) + question + self_pointer + a_record, DNS_SILENT),
        Junk("dns two pointers pointing at each other", "dns",
             _header(6, an=2) + question + cycle_first + a_record + cycle_second + a_record, DNS_SILENT),
        Junk("dns 64-byte label", "dns", _header(7) + _name(b"a" * 64, *labels) + b"\x00\x01\x00\x01", DNS_SILENT),
        Junk("dns 255-byte label", "dns", _header(8) + b"\xff" + b"b" * 255 + b"\x00\x00\x01\x00\x01", DNS_SILENT),
        Junk("dns name over 255 octets", "dns", _header(9) + long_label * 5 + b"\x00\x00\x01\x00\x01", DNS_SILENT),
        Junk("dns qdcount 50, one question", "dns", _header(10, qd=50) + question, DNS_SILENT),
        Junk("dns question cut short", "dns", _header(11) + question[:-3], DNS_SILENT),
        Junk("dns OPT data running past the end", "dns",
             _header(12, ar=1) + question + opt[:-2] + b"\x01\x00", DNS_SILENT),
        Junk("dns qdcount 0", "dns", _header(13, qd=0), DNS_ANSWERED),
        Junk("dns two OPT records", "dns", _header(14, ar=2) + question + opt + opt, DNS_ANSWERED),
        Junk("dns OPT not owned by the root", "dns", _header(15, ar=1) + question + b"\x01x" + opt, DNS_ANSWERED),
        Junk("dns EDNS version 7", "dns", _header(16, ar=1) + question + opt[:6] + b"\x07" + opt[7:], DNS_ANSWERED),
        Junk("dns trailing garbage", "dns", _header(17) + question + b"garbage", DNS_ANSWERED),
        Junk("dns 63-byte label under the zone", "dns",
             _header(18) + _name(b"a" * 63, *labels) + b"\x00\x01\x00\x01", DNS_ANSWERED),
        Junk("dns token-shaped junk label", "dns",
             _header(19) + _name(b"a" * 26, *labels) + b"\x00\x01\x00\x01", DNS_ANSWERED),
        Junk("dns class CH", "dns", _header(20) + _name(b"www", *labels) + b"\x00\x01\x00\x03", DNS_ANSWERED),
    ]


def write(path: Path, junk: list[Junk]) -> None:
    """Save the catalogue for the sender (JSON: kind, channel, hex)."""
    path.write_text(json.dumps([{"kind": j.kind, "channel": j.channel, "hex": j.data.hex()} for j in junk]))


# ---------------------------------------------------------------------------
# The sender, run inside a client namespace
# ---------------------------------------------------------------------------


def flood(spec: Path, device: str, mac: str, server: str, count: int, seconds: float, rate: float) -> dict[str, int]:
    """Send the catalogue round after round: at most ``count`` packets, ``seconds`` long,
    about ``rate`` packets a second. Prints ``started`` after the first round."""
    items = [(item["kind"], item["channel"], bytes.fromhex(item["hex"])) for item in json.loads(spec.read_text())]
    link = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
    dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dns.setblocking(False)
    hardware = bytes.fromhex(mac.replace(":", ""))
    sent: dict[str, int] = {}
    total = 0
    start = time.monotonic()
    try:
        while total < count and time.monotonic() - start < seconds:
            for kind, channel, data in items:
                if total >= count:
                    break
                if channel == "dns":
                    dns.sendto(data, (server, 53))
                else:
                    kind_of_frame = ETH_P_IP if channel == "ipv4" else ETH_P_IPV6
                    link.sendto(data, (device, kind_of_frame, 0, 0, hardware))
                sent[kind] = sent.get(kind, 0) + 1
                total += 1
            if total == len(items) or total == count:
                print("started", flush=True)
            _drain(dns)  # the answers are not ours to check here; keep the queue empty
            # Pace to the rate: sleep off whatever this round ran ahead.
            ahead = total / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
    finally:
        link.close()
        dns.close()
    return sent


def _drain(sock: socket.socket) -> None:
    for _ in range(1024):
        try:
            sock.recv(4096)
        except BlockingIOError:
            return


# DNS over TCP with lying length prefixes. These end a message at once or
# half-close, so the server drops them: (what is sent, whether we then half-close).
CLOSING_LIES = (
    (b"\x00\x64" + _header(32)[:10], True),  # claims 100, sends 10, then half-closes
    (b"\x00\x05" + _header(33) + b"\x00" * 20, False),  # claims 5, sends 32: a 5-byte "message"
    (b"\x00\x00", False),  # a zero-length frame
)
# These claim more than they send and wait: each takes one of the server's slots.
WAITING_LIES = (
    b"\xff\xff" + _header(30) + b"\x03www",  # claims 65535 bytes, sends 16
    b"\x01\x2c" + _header(31)[:5],  # claims 300, sends 5
)


def hold(server: str, connections: int, seconds: float) -> dict[str, int]:
    """Open the closing lies once each, then ``connections`` waiting ones, and keep
    them all until stdin closes or ``seconds`` pass. Prints ``holding N`` (the
    waiting ones); returns how many connections the server closed meanwhile."""
    held: list[socket.socket] = []
    lies = [*CLOSING_LIES, *((WAITING_LIES[i % len(WAITING_LIES)], False) for i in range(connections))]
    for data, half_close in lies:
        sock = socket.create_connection((server, 53), timeout=5)
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        sock.setblocking(False)
        held.append(sock)
    print(f"holding {connections}", flush=True)
    select.select([sys.stdin], [], [], seconds)
    closed = 0
    for sock in held:
        try:
            closed += sock.recv(1) == b""
        except BlockingIOError:
            pass
        except OSError:  # reset: closed with our unread bytes in its queue
            closed += 1
        sock.close()
    return {"opened": len(held), "closed by the server": closed}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    f = commands.add_parser("flood")
    f.add_argument("spec", type=Path)
    f.add_argument("--device", required=True)
    f.add_argument("--mac", required=True)
    f.add_argument("--server", required=True)
    f.add_argument("--count", type=int, required=True)
    f.add_argument("--seconds", type=float, required=True)
    f.add_argument("--rate", type=float, required=True)
    h = commands.add_parser("hold")
    h.add_argument("server")
    h.add_argument("--connections", type=int, required=True)
    h.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args(argv)
    if args.command == "flood":
        result = flood(args.spec, args.device, args.mac, args.server, args.count, args.seconds, args.rate)
    else:
        result = hold(args.server, args.connections, args.seconds)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
