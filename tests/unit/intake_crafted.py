"""Packets crafted with scapy for the intake tests, and what each should parse to.

:func:`crafted` is a hypothesis strategy for well-formed packets of every
kind the intake meets (echo requests and other ICMP, UDP, TCP with any
flags, other protocols, IPv4 options and fragments, IPv6 extension headers,
Ethernet padding). Each comes with its expected :class:`Packet` (or None),
worked out from the fields scapy was given, never by parsing the bytes, so
``parse`` is checked against an independent oracle.

Imported by name (pytest puts this directory on sys.path).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, IPOption_NOP, IPOption_RR
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting
from scapy.packet import Packet as ScapyPacket
from scapy.packet import Raw

from spa.intake.packet import Packet

A4, B4 = "192.0.2.7", "198.51.100.1"  # source and destination of hand-built packets
A6, B6 = "2001:db8::7", "2001:db8::1"


def v4(*layers: object, **fields: object) -> IP:
    """An IPv4 packet from A4 to B4 carrying ``layers``."""
    packet = IP(src=A4, dst=B4, **fields)
    for layer in layers:
        packet = packet / layer
    return packet


def v6(*layers: object) -> IPv6:
    """An IPv6 packet from A6 to B6 carrying ``layers``."""
    packet = IPv6(src=A6, dst=B6)
    for layer in layers:
        packet = packet / layer
    return packet


EXTENSIONS = {
    "hop-by-hop": IPv6ExtHdrHopByHop,
    "routing": IPv6ExtHdrRouting,
    "destination": IPv6ExtHdrDestOpt,
    "fragment": IPv6ExtHdrFragment,
}
TCP_OPTIONS = (
    [],
    [("MSS", 1460)],
    [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 2)), ("NOP", None), ("WScale", 7)],
)
# (flags, offset) of an IPv4 header; only the first two are whole packets.
FRAGMENTS = ((0, 0), ("DF", 0), ("MF", 0), (0, 1), ("MF", 5), (0, 8191))


@dataclass(frozen=True)
class Crafted:
    """Bytes as a capture would deliver them, and the expected parse."""

    data: bytes
    expected: Packet | None
    extension_headers: bool  # IPv6 with extension headers: the BPF filter never passes these
    description: str


def icmp_header(kind: int, code: int, payload: bytes) -> bytes:
    """An ICMP/ICMPv6 header (identifier 0x1234, sequence 1; checksum left 0)."""
    return bytes((kind, code, 0, 0, 0x12, 0x34, 0, 1)) + payload


@st.composite
def crafted(draw: st.DrawFn) -> Crafted:
    version = draw(st.sampled_from((4, 6)))
    if version == 4:
        source = draw(st.ip_addresses(v=4))
        destination = draw(st.ip_addresses(v=4))
    else:
        source = draw(st.ip_addresses(v=6))
        destination = draw(st.ip_addresses(v=6))
    kind = draw(st.sampled_from(("icmp", "icmp-other-family", "udp", "tcp", "other")))
    payload = draw(st.binary(max_size=48))
    port = draw(st.integers(0, 0xFFFF))
    echo = 8 if version == 4 else 128
    own_icmp, other_icmp = (1, 58) if version == 4 else (58, 1)

    transport: ScapyPacket
    protocol: int
    expected_protocol, expected_port, expected_flags = 0, 0, 0
    whole = True  # a kind that parse keeps, before fragment/extension rules
    if kind in ("icmp", "icmp-other-family"):
        icmp_type, icmp_code = draw(st.sampled_from(((echo, 0), (echo, 1), (echo ^ 8 if version == 4 else 129, 0),
                                                     (3, 3), (1, 4), (135, 0), (13, 0))))
        transport = Raw(icmp_header(icmp_type, icmp_code, payload))
        protocol = own_icmp if kind == "icmp" else other_icmp
        whole = kind == "icmp" and (icmp_type, icmp_code) == (echo, 0)
        expected_protocol = protocol
    elif kind == "udp":
        transport = UDP(sport=draw(st.integers(0, 0xFFFF)), dport=port) / Raw(payload)
        protocol = expected_protocol = 17
        expected_port = port
    elif kind == "tcp":
        expected_flags = draw(st.integers(0, 0xFF))
        transport = TCP(sport=draw(st.integers(0, 0xFFFF)), dport=port, flags=expected_flags,
                        options=draw(st.sampled_from(TCP_OPTIONS))) / Raw(payload)
        protocol = expected_protocol = 6
        expected_port = port
    else:
        protocol = draw(st.sampled_from((47, 50, 132, 2, 255)))
        transport = Raw(payload + bytes(20))
        whole = False

    extensions: list[str] = []
    if version == 4:
        flags, offset = draw(st.sampled_from(FRAGMENTS))
        options = draw(st.sampled_from(([], [IPOption_NOP()] * 4, [IPOption_RR(routers=["192.0.2.1"] * 3)])))
        layer = IP(src=str(source), dst=str(destination), proto=protocol, flags=flags, frag=offset,
                   options=options)
        fragmented = offset != 0 or "MF" in str(flags)
        data = bytes(layer / transport)
    else:
        extensions = draw(st.lists(st.sampled_from(sorted(EXTENSIONS)), max_size=3))
        layer = IPv6(src=str(source), dst=str(destination))
        chain: ScapyPacket = layer
        for name in extensions:
            chain = chain / EXTENSIONS[name]()
        # scapy fills each next-header from the layer above; Raw needs it said.
        last = chain.lastlayer() if extensions else layer
        if isinstance(transport, Raw):
            last.nh = protocol
        fragmented = "fragment" in extensions
        data = bytes(chain / transport)

    padding = draw(st.sampled_from((b"", b"\x00" * 6, b"\xff" * 18)))
    expected = None
    mapped = version == 6 and ipaddress.ip_address(source).ipv4_mapped is not None  # type: ignore[union-attr]
    if whole and not fragmented and not mapped:  # an IPv4-mapped IPv6 source is dropped
        expected = Packet(ipaddress.ip_address(source), ipaddress.ip_address(destination),
                          expected_protocol, expected_port, expected_flags, payload)
    what = f"v{version} {kind} proto={protocol} port={port} ext={extensions} pad={len(padding)}"
    return Crafted(data + padding, expected, bool(extensions), what)
