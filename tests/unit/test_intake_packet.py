"""spa.intake.packet.parse on scapy-crafted packets, and on junk."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from intake_crafted import A4, A6, B4, B6, Crafted, crafted, icmp_header, v4, v6
from scapy.layers.inet import ICMP, TCP, UDP, IPOption_NOP, IPOption_RR
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.packet import Raw

from spa.intake.packet import MAX_EXTENSION_HEADERS, Packet, parse

TOKEN = bytes(range(16))
PING_DATA = bytes(16) + TOKEN + TOKEN  # iputils layout: timestamp, then the pattern


# -- ICMP ---------------------------------------------------------------------

def test_ipv4_echo_request() -> None:
    parsed = parse(bytes(v4(ICMP(type=8, id=7, seq=3), PING_DATA)))
    assert parsed == Packet(ipaddress.IPv4Address(A4), ipaddress.IPv4Address(B4), 1, 0, 0, PING_DATA)


def test_ipv6_echo_request() -> None:
    parsed = parse(bytes(v6(ICMPv6EchoRequest(id=7, seq=3, data=PING_DATA))))
    assert parsed == Packet(ipaddress.IPv6Address(A6), ipaddress.IPv6Address(B6), 58, 0, 0, PING_DATA)


def test_empty_echo_request_has_empty_payload() -> None:
    parsed = parse(bytes(v4(ICMP(type=8))))
    assert parsed is not None and parsed.payload == b""


@pytest.mark.parametrize("icmp", [ICMP(type=0), ICMP(type=8, code=1), ICMP(type=3, code=3), ICMP(type=13)],
                         ids=["echo-reply", "echo-code-1", "unreachable", "timestamp"])
def test_other_icmp_is_dropped(icmp: ICMP) -> None:
    assert parse(bytes(v4(icmp, PING_DATA))) is None


def test_icmpv6_echo_reply_and_neighbour_solicitation_are_dropped() -> None:
    assert parse(bytes(v6(ICMPv6EchoReply(data=PING_DATA)))) is None
    neighbour = IPv6(src=A6, dst=B6, nh=58) / Raw(icmp_header(135, 0, bytes(16)))
    assert parse(bytes(neighbour)) is None


def test_icmp_of_the_other_family_is_dropped() -> None:
    # An ICMPv6 echo request inside IPv4, and an ICMP one inside IPv6.
    assert parse(bytes(v4(Raw(icmp_header(128, 0, PING_DATA)), proto=58))) is None
    assert parse(bytes(IPv6(src=A6, dst=B6, nh=1) / Raw(icmp_header(8, 0, PING_DATA)))) is None


def test_icmp_shorter_than_its_header_is_dropped() -> None:
    assert parse(bytes(v4(Raw(bytes([8, 0, 0, 0, 0, 0, 0])), proto=1))) is None
    assert parse(bytes(IPv6(src=A6, dst=B6, nh=58) / Raw(bytes([128, 0, 0])))) is None


# -- UDP ----------------------------------------------------------------------

def test_udp_ipv4_and_ipv6() -> None:
    assert parse(bytes(v4(UDP(sport=1234, dport=62201), b"knock"))) == Packet(
        ipaddress.IPv4Address(A4), ipaddress.IPv4Address(B4), 17, 62201, 0, b"knock")
    assert parse(bytes(v6(UDP(sport=1234, dport=53), b"query"))) == Packet(
        ipaddress.IPv6Address(A6), ipaddress.IPv6Address(B6), 17, 53, 0, b"query")


def test_udp_payload_ends_at_the_udp_length() -> None:
    # Trailing bytes inside the IP payload but past the UDP length are not data.
    parsed = parse(bytes(v4(UDP(dport=9, len=8 + 3), b"abcdef")))
    assert parsed is not None and parsed.payload == b"abc"


@pytest.mark.parametrize("length", [0, 7, 8 + 7], ids=["zero", "below-header", "past-ip-payload"])
def test_bad_udp_length_is_dropped(length: int) -> None:
    assert parse(bytes(v4(UDP(dport=9, len=length), b"abcdef"))) is None
    assert parse(bytes(v6(UDP(dport=9, len=length), b"abcdef"))) is None


def test_truncated_udp_header_is_dropped() -> None:
    assert parse(bytes(v4(Raw(bytes(7)), proto=17))) is None


# -- TCP ----------------------------------------------------------------------

def test_tcp_syn_with_options_has_flags_port_and_no_payload() -> None:
    syn = TCP(sport=40000, dport=7000, flags="S", options=[("MSS", 1460), ("SAckOK", b""), ("WScale", 7)])
    parsed = parse(bytes(v4(syn)))
    assert parsed == Packet(ipaddress.IPv4Address(A4), ipaddress.IPv4Address(B4), 6, 7000, 0x02, b"")


def test_tcp_data_after_the_data_offset() -> None:
    parsed = parse(bytes(v6(TCP(dport=443, flags="PA", options=[("NOP", None)] * 4), b"hello")))
    assert parsed is not None
    assert (parsed.protocol, parsed.port, parsed.flags, parsed.payload) == (6, 443, 0x18, b"hello")


@pytest.mark.parametrize("offset", [0, 4, 15], ids=["zero", "below-minimum", "past-end"])
def test_bad_tcp_data_offset_is_dropped(offset: int) -> None:
    assert parse(bytes(v4(TCP(dport=22, flags="S", dataofs=offset)))) is None


def test_truncated_tcp_header_is_dropped() -> None:
    assert parse(bytes(v4(Raw(bytes(19)), proto=6))) is None


# -- IPv4 header --------------------------------------------------------------

@pytest.mark.parametrize("options", [[IPOption_NOP()] * 4, [IPOption_RR(routers=["192.0.2.9"] * 4)]],
                         ids=["nops", "record-route"])
def test_ipv4_options_are_skipped_by_ihl(options: list[object]) -> None:
    data = bytes(v4(UDP(dport=53), b"x", options=options))
    assert data[0] & 0x0F > 5
    parsed = parse(data)
    assert parsed is not None and (parsed.port, parsed.payload) == (53, b"x")


@pytest.mark.parametrize("ihl", [0, 4], ids=["zero", "four"])
def test_ipv4_header_length_below_five_words_is_dropped(ihl: int) -> None:
    assert parse(bytes(v4(UDP(dport=53), b"x", ihl=ihl))) is None


def test_ipv4_header_length_past_total_length_is_dropped() -> None:
    data = bytearray(bytes(v4(UDP(dport=53))))
    data[0] = 0x4F  # 60-byte header in a 28-byte packet
    assert parse(bytes(data)) is None


def test_ipv4_total_length_past_buffer_is_dropped() -> None:
    # A capture cut short (snaplen) must not yield a partial payload.
    data = bytes(v4(UDP(dport=53), b"abcdef"))
    assert parse(data[:-1]) is None


def test_ipv4_total_length_below_header_is_dropped() -> None:
    assert parse(bytes(v4(UDP(dport=53), b"x", len=19))) is None


@pytest.mark.parametrize(("flags", "offset"), [(0, 1), (0, 185), ("MF", 0), ("MF", 3)],
                         ids=["second", "later", "first-with-MF", "middle"])
def test_ipv4_fragments_are_dropped(flags: object, offset: int) -> None:
    assert parse(bytes(v4(UDP(dport=53), b"x", flags=flags, frag=offset))) is None
    assert parse(bytes(v4(ICMP(type=8), PING_DATA, flags=flags, frag=offset))) is None


def test_ipv4_dont_fragment_is_fine() -> None:
    assert parse(bytes(v4(UDP(dport=53), b"x", flags="DF"))) is not None


# -- IPv6 extension headers ---------------------------------------------------

@pytest.mark.parametrize("chain", [
    [IPv6ExtHdrHopByHop()],
    [IPv6ExtHdrRouting(addresses=["2001:db8::99"])],
    [IPv6ExtHdrDestOpt()],
    [IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt(), IPv6ExtHdrRouting(), IPv6ExtHdrDestOpt()],
], ids=["hop-by-hop", "routing", "destination", "chain"])
def test_ipv6_extension_headers_are_followed(chain: list[object]) -> None:
    parsed = parse(bytes(v6(*chain, UDP(dport=62201), b"spa")))
    assert parsed is not None and (parsed.protocol, parsed.port, parsed.payload) == (17, 62201, b"spa")
    parsed = parse(bytes(v6(*chain, ICMPv6EchoRequest(data=PING_DATA))))
    assert parsed is not None and parsed.payload == PING_DATA


def test_ipv6_fragment_header_is_dropped() -> None:
    assert parse(bytes(v6(IPv6ExtHdrFragment(), UDP(dport=53), b"x"))) is None
    assert parse(bytes(v6(IPv6ExtHdrHopByHop(), IPv6ExtHdrFragment(m=1), UDP(dport=53), b"x"))) is None


def test_ipv6_extension_chain_is_bounded() -> None:
    ok = [IPv6ExtHdrDestOpt()] * MAX_EXTENSION_HEADERS
    assert parse(bytes(v6(*ok, UDP(dport=53), b"x"))) is not None
    assert parse(bytes(v6(*ok, IPv6ExtHdrDestOpt(), UDP(dport=53), b"x"))) is None


def test_ipv6_extension_header_past_the_payload_is_dropped() -> None:
    data = bytearray(bytes(v6(IPv6ExtHdrDestOpt(), UDP(dport=53), b"x")))
    data[41] = 200  # claims 1608 bytes of options
    assert parse(bytes(data)) is None
    assert parse(bytes(v6(IPv6ExtHdrDestOpt()))[:44]) is None


def test_ipv6_payload_length_past_buffer_is_dropped() -> None:
    data = bytes(v6(UDP(dport=53), b"abcdef"))
    assert parse(data[:-1]) is None


def test_ipv6_jumbogram_length_zero_is_dropped() -> None:
    data = bytearray(bytes(v6(UDP(dport=53), b"abcdef")))
    data[4:6] = b"\x00\x00"
    assert parse(bytes(data)) is None


# -- padding, versions, other protocols ---------------------------------------

@pytest.mark.parametrize("packet", [
    v4(ICMP(type=8), PING_DATA), v4(UDP(dport=53), b"x"), v4(TCP(dport=22, flags="S"), b"d"),
    v6(ICMPv6EchoRequest(data=PING_DATA)), v6(UDP(dport=53), b"x"), v6(TCP(dport=22, flags="S"), b"d"),
], ids=["icmp4", "udp4", "tcp4", "icmp6", "udp6", "tcp6"])
def test_ethernet_padding_never_reaches_the_payload(packet: object) -> None:
    data = bytes(packet)  # type: ignore[call-overload]
    plain = parse(data)
    assert plain is not None
    padded = parse(data + b"\xee" * max(18, 60 - len(data)))
    assert padded == plain and b"\xee" not in padded.payload


@pytest.mark.parametrize("data", [b"", b"\x45", bytes(19), b"\x45" + bytes(19), b"\x60" + bytes(38),
                                  bytes(v4(UDP(dport=53)))[:-1], b"\x55" + bytes(40), b"\x00" * 60],
                         ids=["empty", "one", "19-zero", "19-v4", "39-v6", "short-udp", "version-5", "zeros"])
def test_short_or_unknown_is_dropped(data: bytes) -> None:
    assert parse(data) is None


@pytest.mark.parametrize("protocol", [2, 47, 50, 89, 132])
def test_other_protocols_are_dropped(protocol: int) -> None:
    assert parse(bytes(v4(Raw(bytes(40)), proto=protocol))) is None
    assert parse(bytes(IPv6(src=A6, dst=B6, nh=protocol) / Raw(bytes(40)))) is None


def test_payload_is_bytes() -> None:
    parsed = parse(bytes(v4(UDP(dport=53), b"abc")))
    assert parsed is not None and type(parsed.payload) is bytes


# -- properties ---------------------------------------------------------------

@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(crafted())
def test_parse_agrees_with_the_fields_scapy_was_given(packet: Crafted) -> None:
    assert parse(packet.data) == packet.expected, packet.description


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=128))
def test_parse_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    result = parse(data)
    assert result is None or isinstance(result, Packet)


@st.composite
def ip_shaped(draw: st.DrawFn) -> bytes:
    # Random bytes behind a plausible first byte reach the deeper branches.
    first = draw(st.sampled_from((0x45, 0x46, 0x4F, 0x41, 0x60, 0x6F)))
    return bytes([first]) + draw(st.binary(min_size=19, max_size=120))


@settings(max_examples=1000, deadline=None)
@given(ip_shaped())
def test_parse_never_raises_on_ip_shaped_junk(data: bytes) -> None:
    result = parse(data)
    if result is not None:
        assert len(result.payload) <= len(data) and 0 <= result.port <= 0xFFFF


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(crafted(), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=6),
       st.integers(0, 200))
def test_parse_never_raises_on_mutated_packets(packet: Crafted, changes: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(packet.data)
    for position, value in changes:
        if data:
            data[position % len(data)] = value
    mutated = bytes(data[: max(0, len(data) - cut % 8)])
    result = parse(mutated)
    assert result is None or len(result.payload) <= len(mutated)


def test_length_fields_are_big_endian() -> None:
    # A hand-built packet, no scapy: pins the byte order of every length field.
    udp = struct.pack("!HHHH", 1, 0x1234, 8 + 2, 0) + b"hi"
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                         bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    assert parse(header + udp) == Packet(ipaddress.IPv4Address("10.0.0.1"), ipaddress.IPv4Address("10.0.0.2"),
                                         17, 0x1234, 0, b"hi")
