"""Parse one captured IP packet into the few fields the carriers need.

Pure and total: :func:`parse` takes the bytes an ``AF_PACKET``/``SOCK_DGRAM``
socket returns (the packet from its IP header on) and gives a :class:`Packet`
or ``None``; it never raises, whatever the bytes. It knows nothing about
tokens: it only says who sent what to which port, and hands over the payload.

What it keeps, and why it refuses the rest:

* IPv4 or IPv6 carrying an ICMP/ICMPv6 *echo request* (type 8 / 128, code 0),
  a UDP datagram, or a TCP segment. Echo replies, errors and every other
  protocol carry no knock.
* Only whole, unfragmented packets. A knock is at most a few hundred bytes and
  never needs fragmenting, so a fragment is either unusual or an attempt to hide
  a header from a filter: IPv4 packets with a fragment offset or the
  more-fragments bit, and IPv6 packets with a fragment header, are dropped.
* No IPv6 packet whose source is IPv4-mapped (``::ffff:a.b.c.d``): that is
  an IPv4 host's address, and a grant for it would open the IPv4 host.
* Lengths are taken from the IP header (IPv4 total length, IPv6 payload
  length), never from the buffer: Ethernet pads short frames to 60 bytes and
  the padding must not leak into a payload. A header that claims more than the
  buffer holds (a truncated capture) is dropped.

Checksums are not verified: the kernel has not checked them yet when
``AF_PACKET`` sees a packet, and a knock is authenticated by its own MAC, so a
corrupted one fails there.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from spa.core.events import IPAddress

ICMP = 1
TCP = 6
UDP = 17
ICMPV6 = 58

ICMP_ECHO_REQUEST = 8
ICMPV6_ECHO_REQUEST = 128

# IPv6 extension headers we walk over (all share the "next header, length in
# 8-octet units not counting the first" layout) and the fragment header we drop.
_HOP_BY_HOP = 0
_ROUTING = 43
_DESTINATION_OPTIONS = 60
_WALKED = frozenset((_HOP_BY_HOP, _ROUTING, _DESTINATION_OPTIONS))
# A real packet has at most a handful; a long chain is only a way to burn CPU.
MAX_EXTENSION_HEADERS = 8

_IPV4_MIN = 20
_IPV6_HEADER = 40
_ICMP_HEADER = 8
_UDP_HEADER = 8
_TCP_MIN = 20
_MAPPED_PREFIX = bytes(10) + b"\xff\xff"  # ::ffff:0:0/96, IPv4-mapped
_FRAGMENTED = 0x3FFF  # IPv4 more-fragments bit | 13-bit fragment offset

_v4_fixed = struct.Struct("!BxHxxHxBxx4s4s").unpack_from
_v6_fixed = struct.Struct("!BxxxHBx16s16s").unpack_from
_udp_header = struct.Struct("!xxHH").unpack_from
_tcp_header = struct.Struct("!xxH8xBB").unpack_from
_v4_address = ipaddress.IPv4Address
_v6_address = ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Packet:
    """What a carrier needs from one packet.

    ``port`` is the destination port (0 for ICMP), ``flags`` the TCP flags
    byte (0 for other protocols), ``payload`` the UDP or TCP data, or the data
    of an echo request after its 8-byte ICMP header (identifier and sequence
    number are not part of it).
    """

    source: IPAddress
    destination: IPAddress
    protocol: int
    port: int
    flags: int
    payload: bytes


def parse(datagram: bytes) -> Packet | None:
    """Parse an IP packet (IP header first); ``None`` for anything not kept.

    Never raises: every length is checked before it is used, so arbitrary
    bytes from the wire give either a Packet or None.
    """
    if not datagram:
        return None
    version = datagram[0] >> 4
    if version == 4:
        return _parse_v4(datagram)
    if version == 6:
        return _parse_v6(datagram)
    return None


def _parse_v4(datagram: bytes) -> Packet | None:
    if len(datagram) < _IPV4_MIN:
        return None
    first, total, fragment, protocol, source, destination = _v4_fixed(datagram)
    header = (first & 0x0F) * 4  # IHL counts 32-bit words; options live inside it
    if header < _IPV4_MIN or total < header or total > len(datagram):
        return None
    if fragment & _FRAGMENTED:
        # A knock never needs fragmenting: drop non-first fragments (no
        # transport header) and first fragments (incomplete payload) alike.
        return None
    if protocol == ICMP:
        if total - header < _ICMP_HEADER or datagram[header] != ICMP_ECHO_REQUEST or datagram[header + 1]:
            return None
        return Packet(_v4_address(source), _v4_address(destination), ICMP, 0, 0,
                      datagram[header + _ICMP_HEADER:total])
    return _transport(datagram, header, total, protocol, _v4_address(source), _v4_address(destination))


def _parse_v6(datagram: bytes) -> Packet | None:
    if len(datagram) < _IPV6_HEADER:
        return None
    _, length, protocol, source, destination = _v6_fixed(datagram)
    end = _IPV6_HEADER + length  # a jumbogram (length 0) is left with no room for anything
    if end > len(datagram):
        return None
    if source[:12] == _MAPPED_PREFIX:
        # An IPv4 host in IPv6 syntax (spa.core.addresses): no real IPv6
        # packet comes from one, and the firewall would read it as IPv4.
        return None
    offset = _IPV6_HEADER
    walked = 0
    while protocol in _WALKED:
        walked += 1
        if walked > MAX_EXTENSION_HEADERS or offset + 8 > end:
            return None
        protocol = datagram[offset]
        offset += (datagram[offset + 1] + 1) * 8
    # Anything else, the fragment header (44) included, ends the walk here.
    if protocol == ICMPV6:
        if end - offset < _ICMP_HEADER or datagram[offset] != ICMPV6_ECHO_REQUEST or datagram[offset + 1]:
            return None
        return Packet(_v6_address(source), _v6_address(destination), ICMPV6, 0, 0,
                      datagram[offset + _ICMP_HEADER:end])
    return _transport(datagram, offset, end, protocol, _v6_address(source), _v6_address(destination))


def _transport(datagram: bytes, offset: int, end: int, protocol: int,
               source: IPAddress, destination: IPAddress) -> Packet | None:
    """UDP or TCP at ``datagram[offset:end]``; None for other protocols."""
    if protocol == UDP:
        if end - offset < _UDP_HEADER:
            return None
        port, length = _udp_header(datagram, offset)
        # The UDP length may be shorter than the IP payload, never longer.
        if length < _UDP_HEADER or offset + length > end:
            return None
        return Packet(source, destination, UDP, port, 0, datagram[offset + _UDP_HEADER:offset + length])
    if protocol == TCP:
        if end - offset < _TCP_MIN:
            return None
        port, data_offset, flags = _tcp_header(datagram, offset)
        header = (data_offset >> 4) * 4
        if header < _TCP_MIN or offset + header > end:
            return None
        return Packet(source, destination, TCP, port, flags, datagram[offset + header:end])
    return None
