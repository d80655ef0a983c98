"""The compiled BPF filter, run by a small classic-BPF interpreter (no root).

The interpreter follows the kernel's semantics for what we emit: 32-bit
unsigned A and X, big-endian loads, a load past the end of the packet ends
the program with 0, conditional jumps count from the next instruction.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from intake_crafted import A4, A6, B4, B6, Crafted, crafted, icmp_header, v4, v6
from scapy.layers.inet import ICMP, TCP, UDP, IPOption_NOP
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
)
from scapy.layers.l2 import ARP
from scapy.packet import Raw

from spa.intake import bpf
from spa.intake.bpf import MAX_INSTRUCTIONS, Instruction, PortRange, Wanted, compile_filter, merge
from spa.intake.packet import Packet, parse

MASK = 0xFFFFFFFF
PING_DATA = bytes(range(48))
KNOCK = Wanted(
    icmp_echo=True,
    udp=(PortRange(53, 53), PortRange(62201, 62201), PortRange(7000, 7099)),
    tcp_syn=(PortRange(7000, 7099), PortRange(22, 22)),
)


class Fell(Exception):
    """The program ran off its end or jumped outside itself (the kernel refuses such programs)."""


def run(program: list[Instruction], packet: bytes, pkttype: int = bpf.PACKET_HOST) -> int:
    """Interpret classic BPF over ``packet``; return what the program returns.

    ``pkttype`` is what the kernel's ancillary load of skb->pkt_type gives.
    """
    a = x = 0
    pc = 0

    def load(offset: int, size: int) -> int | None:
        if offset < 0 or offset + size > len(packet):
            return None
        return int.from_bytes(packet[offset:offset + size], "big")

    while True:
        if not 0 <= pc < len(program):
            raise Fell(pc)
        code, jt, jf, k = program[pc]
        pc += 1
        cls = code & 0x07
        if cls in (bpf.BPF_LD, bpf.BPF_LDX):
            size = {bpf.BPF_W: 4, bpf.BPF_H: 2, bpf.BPF_B: 1}[code & 0x18]
            mode = code & 0xE0
            if cls == bpf.BPF_LDX:
                if mode == bpf.BPF_IMM:
                    x = k & MASK
                elif mode == bpf.BPF_MSH and size == 1:
                    value = load(k, 1)
                    if value is None:
                        return 0
                    x = 4 * (value & 0x0F)
                else:
                    raise AssertionError(f"unsupported ldx {code:#x}")
                continue
            if mode == bpf.BPF_IMM:
                a = k & MASK
                continue
            if mode == bpf.BPF_ABS and k >= bpf.SKF_AD_OFF & MASK:
                if (k, size) != (bpf.PKTTYPE, 4):
                    raise AssertionError(f"unsupported ancillary load {k:#x}")
                a = pkttype
                continue
            if mode == bpf.BPF_ABS:
                value = load(k, size)
            elif mode == bpf.BPF_IND:
                value = load(x + k, size)
            else:
                raise AssertionError(f"unsupported ld {code:#x}")
            if value is None:
                return 0  # out-of-bounds load: the kernel ends the program with 0
            a = value
        elif cls == bpf.BPF_ALU:
            if code == bpf.AND_K:
                a &= k
            else:
                raise AssertionError(f"unsupported alu {code:#x}")
        elif cls == bpf.BPF_JMP:
            op = code & 0xF0
            if code & 0x08:
                raise AssertionError("jumps on X are not emitted")
            if op == bpf.BPF_JA:
                pc += k
                continue
            taken = {bpf.BPF_JEQ: a == k, bpf.BPF_JGT: a > k, bpf.BPF_JGE: a >= k,
                     bpf.BPF_JSET: bool(a & k)}[op]
            pc += jt if taken else jf
        elif cls == bpf.BPF_RET:
            if code != bpf.RET_K:
                raise AssertionError(f"unsupported ret {code:#x}")
            return k
        else:
            raise AssertionError(f"unsupported class {code:#x}")


def check_like_the_kernel(program: list[Instruction]) -> None:
    """The static checks of the kernel's bpf_check_classic that apply to us."""
    assert 1 <= len(program) <= MAX_INSTRUCTIONS
    for pc, (code, jt, jf, k) in enumerate(program):
        assert 0 <= code <= 0xFFFF and 0 <= jt <= 255 and 0 <= jf <= 255 and 0 <= k <= MASK
        if code == bpf.JA:
            assert k < len(program) - pc - 1, f"ja at {pc} leaves the program"
        elif code & 0x07 == bpf.BPF_JMP:
            assert pc + jt + 1 < len(program) and pc + jf + 1 < len(program), f"jump at {pc} leaves the program"
    assert program[-1][0] & 0x07 == bpf.BPF_RET, "the last instruction must be a ret"


def passes(wanted: Wanted, packet: object) -> bool:
    data = packet if isinstance(packet, bytes) else bytes(packet)  # type: ignore[call-overload]
    verdict = run(compile_filter(wanted), data)
    assert verdict in (0, 2048)
    return verdict > 0


# -- what passes and what does not ---------------------------------------------

@pytest.mark.parametrize("packet", [
    v4(ICMP(type=8), PING_DATA),
    v6(ICMPv6EchoRequest(data=PING_DATA)),
    v4(UDP(dport=53), b"q"), v6(UDP(dport=62201), b"spa"), v4(UDP(dport=7050)),
    v4(TCP(dport=22, flags="S")), v6(TCP(dport=7099, flags="S")), v4(TCP(dport=7000, flags="SE")),
    v4(UDP(dport=53), b"q", options=[IPOption_NOP()] * 8), v4(TCP(dport=22, flags="S"), flags="DF"),
], ids=["ping4", "ping6", "udp4-53", "udp6-62201", "udp4-range", "syn4-22", "syn6-range-end", "syn-ece",
        "udp4-options", "syn4-df"])
def test_wanted_packets_pass(packet: object) -> None:
    assert passes(KNOCK, packet)


@pytest.mark.parametrize("packet", [
    v4(TCP(dport=22, flags="A")), v4(TCP(dport=22, flags="SA")), v6(TCP(dport=22, flags="SA")),
    v4(TCP(dport=22, flags="R")), v4(TCP(dport=22, flags="F")),
    v4(TCP(dport=23, flags="S")), v4(TCP(dport=6999, flags="S")), v6(TCP(dport=7100, flags="S")),
    v4(UDP(dport=54)), v4(UDP(dport=6999)), v6(UDP(dport=7100)), v4(UDP(dport=62200)), v4(UDP(dport=0)),
    v4(ICMP(type=0), PING_DATA), v4(ICMP(type=8, code=1)), v4(ICMP(type=3, code=3)),
    v6(ICMPv6EchoReply(data=PING_DATA)), IPv6(src=A6, dst=B6, nh=58) / Raw(icmp_header(135, 0, bytes(16))),
    v4(Raw(icmp_header(128, 0, PING_DATA)), proto=58), IPv6(src=A6, dst=B6, nh=1) / Raw(icmp_header(8, 0, b"")),
    v4(Raw(bytes(40)), proto=47), IPv6(src=A6, dst=B6, nh=132) / Raw(bytes(40)),
    v4(UDP(dport=53), b"q", flags="MF"), v4(UDP(dport=53), b"q", frag=1), v4(Raw(bytes(8)), proto=17, frag=100),
    v4(ICMP(type=8), PING_DATA, flags="MF"), v6(IPv6ExtHdrFragment(), UDP(dport=53), b"q"),
    v6(IPv6ExtHdrHopByHop(), UDP(dport=53), b"q"), v6(IPv6ExtHdrDestOpt(), ICMPv6EchoRequest()),
    ARP(pdst="192.0.2.1"),
], ids=["ack", "syn-ack4", "syn-ack6", "rst", "fin", "syn-23", "syn-below-range", "syn6-above-range",
        "udp-54", "udp-below-range", "udp6-above-range", "udp-62200", "udp-0",
        "echo-reply", "echo-code-1", "unreachable", "echo-reply6", "neighbour-solicitation",
        "icmp6-in-ipv4", "icmp-in-ipv6", "gre", "sctp6",
        "first-fragment", "second-fragment", "later-fragment", "ping-fragment", "ipv6-fragment-header",
        "ipv6-hop-by-hop", "ipv6-destination-options", "arp"])
def test_unwanted_packets_are_refused(packet: object) -> None:
    assert not passes(KNOCK, packet)


@pytest.mark.parametrize("pkttype", [1, 2, 3, 4], ids=["broadcast", "multicast", "otherhost", "outgoing"])
def test_only_frames_addressed_to_this_host_pass(pkttype: int) -> None:
    # In promiscuous mode the socket also hears other machines' knocks.
    program = compile_filter(KNOCK)
    for packet in (v4(UDP(dport=53)), v6(TCP(dport=22, flags="S")), v4(ICMP(type=8), PING_DATA)):
        assert run(program, bytes(packet), bpf.PACKET_HOST) > 0
        assert run(program, bytes(packet), pkttype) == 0


def test_truncated_packets_are_refused_not_crashed() -> None:
    data = bytes(v4(TCP(dport=22, flags="S")))
    assert not any(passes(KNOCK, data[:cut]) for cut in range(len(data) - 6))  # cut into the TCP flags


def test_nothing_wanted_refuses_everything() -> None:
    assert compile_filter(Wanted()) == [(bpf.RET_K, 0, 0, 0)]
    assert not passes(Wanted(), v4(ICMP(type=8)))


@pytest.mark.parametrize(("wanted", "yes", "no"), [
    (Wanted(icmp_echo=True), v6(ICMPv6EchoRequest()), v4(UDP(dport=53))),
    (Wanted(udp=(PortRange(53, 53),)), v4(UDP(dport=53)), v4(ICMP(type=8))),
    (Wanted(tcp_syn=(PortRange(22, 22),)), v6(TCP(dport=22, flags="S")), v6(UDP(dport=22))),
    (Wanted(udp=(PortRange(0, 65535),)), v4(UDP(dport=0)), v4(TCP(dport=0, flags="S"))),
], ids=["icmp-only", "udp-only", "tcp-only", "every-udp-port"])
def test_each_kind_alone(wanted: Wanted, yes: object, no: object) -> None:
    assert passes(wanted, yes)
    assert not passes(wanted, no)


def test_snaplen_is_what_accept_returns() -> None:
    program = compile_filter(KNOCK, snaplen=512)
    assert run(program, bytes(v4(UDP(dport=53)))) == 512
    with pytest.raises(ValueError):
        compile_filter(KNOCK, snaplen=0)


def test_programs_are_short() -> None:
    program = compile_filter(KNOCK)
    check_like_the_kernel(program)
    assert len(program) <= 48, len(program)  # 3 of them check the IPv4 header length


# -- many ranges ----------------------------------------------------------------

def test_many_ranges_compile_within_reach_and_limit() -> None:
    udp = tuple(PortRange(port, port) for port in range(1000, 3000, 2))  # 1,000 single ports
    tcp = tuple(PortRange(port, port + 1) for port in range(10000, 14000, 4))  # 1,000 pairs
    wanted = Wanted(icmp_echo=True, udp=udp, tcp_syn=tcp)
    program = compile_filter(wanted)
    check_like_the_kernel(program)
    for port in (1000, 1998, 2998):
        assert run(program, bytes(v4(UDP(dport=port)))) > 0
    for port in (999, 1001, 2999, 3000):
        assert run(program, bytes(v4(UDP(dport=port)))) == 0
    for port in (10000, 10001, 13997):
        assert run(program, bytes(v6(TCP(dport=port, flags="S")))) > 0
    for port in (10002, 13998, 14000):
        assert run(program, bytes(v6(TCP(dport=port, flags="S")))) == 0


def test_too_many_ranges_is_a_clear_value_error() -> None:
    ranges = tuple(PortRange(port, port) for port in range(0, 10000, 2))
    with pytest.raises(ValueError, match="at most 4096"):
        compile_filter(Wanted(udp=ranges))


def test_overlapping_and_adjacent_ranges_merge() -> None:
    assert merge([PortRange(10, 20), PortRange(5, 9), PortRange(15, 30), PortRange(40, 40), PortRange(31, 31)]) == [
        PortRange(5, 31), PortRange(40, 40)]
    # 10,000 adjacent single ports are one range: a short program.
    program = compile_filter(Wanted(udp=tuple(PortRange(p, p) for p in range(20000, 30000))))
    assert len(program) < 30


def test_port_range_and_wanted_validate() -> None:
    for low, high in ((5, 4), (-1, 3), (0, 65536)):
        with pytest.raises(ValueError):
            PortRange(low, high)
    with pytest.raises(TypeError):
        Wanted(udp=[PortRange(1, 2)])  # type: ignore[arg-type]
    assert 7 in PortRange(5, 9) and 10 not in PortRange(5, 9) and str(PortRange(5, 9)) == "5-9"


# -- the filter and parse + matches agree -----------------------------------------

port_ranges = st.lists(
    st.tuples(st.integers(0, 0xFFFF), st.integers(0, 300)).map(
        lambda t: PortRange(t[0], min(0xFFFF, t[0] + t[1]))), max_size=6).map(tuple)
wanteds = st.builds(Wanted, st.booleans(), port_ranges, port_ranges)


def near_ports(wanted: Wanted) -> list[int]:
    """Range edges and their neighbours: where an off-by-one would show."""
    edges = {0, 0xFFFF}
    for r in (*wanted.udp, *wanted.tcp_syn):
        edges |= {r.low - 1, r.low, r.high, r.high + 1}
    return sorted(p for p in edges if 0 <= p <= 0xFFFF)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wanteds, crafted())
def test_filter_agrees_with_parse_and_matches(wanted: Wanted, packet: Crafted) -> None:
    verdict = run(compile_filter(wanted), packet.data) > 0
    parsed = parse(packet.data)
    assert parsed == packet.expected
    if packet.extension_headers:
        assert not verdict, "the filter only reads the IPv6 fixed header"
    elif packet.data[0] >> 4 == 6 and packet.data[8:20] == bytes(10) + b"\xff\xff":
        assert parsed is None  # an IPv4-mapped source: the filter may pass it, parse drops it
    else:
        assert verdict == (parsed is not None and wanted.matches(parsed)), packet.description


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wanteds, st.sampled_from((4, 6)), st.sampled_from(("udp", "tcp")), st.data())
def test_filter_agrees_at_range_edges(wanted: Wanted, version: int, kind: str, data: st.DataObject) -> None:
    port = data.draw(st.sampled_from(near_ports(wanted)))
    flags = data.draw(st.sampled_from(("S", "SA", "A", "SF", "SR")))
    transport = UDP(dport=port) if kind == "udp" else TCP(dport=port, flags=flags)
    raw = bytes((v4 if version == 4 else v6)(transport, b"k"))
    parsed = parse(raw)
    assert parsed is not None
    assert (run(compile_filter(wanted), raw) > 0) == wanted.matches(parsed)


@settings(max_examples=1000, deadline=None)
@given(wanteds, st.sampled_from((0x45, 0x46, 0x4F, 0x60)), st.binary(min_size=19, max_size=100))
def test_filter_never_drops_what_parse_and_matches_keep(wanted: Wanted, first: int, rest: bytes) -> None:
    # On junk the filter may pass what parse then refuses (it is a pre-filter),
    # but never the other way round, bar IPv6 extension headers.
    data = bytes([first]) + rest
    program = compile_filter(wanted)
    verdict = run(program, data)
    parsed = parse(data)
    if parsed is not None and wanted.matches(parsed) and not (first >> 4 == 6 and data[6] in (0, 43, 60)):
        assert verdict > 0


def test_matches_is_the_pure_predicate() -> None:
    source, destination = ipaddress.ip_address(A4), ipaddress.ip_address(B4)
    syn = Packet(source, destination, 6, 22, 0x02, b"")
    assert KNOCK.matches(syn)
    assert not KNOCK.matches(Packet(source, destination, 6, 22, 0x12, b""))
    assert not KNOCK.matches(Packet(source, destination, 6, 23, 0x02, b""))
    assert KNOCK.matches(Packet(source, destination, 17, 7099, 0, b""))
    assert not Wanted(udp=KNOCK.udp).matches(Packet(source, destination, 1, 0, 0, b""))
    assert not KNOCK.matches(Packet(source, destination, 47, 0, 0, b""))


@pytest.mark.parametrize("ihl", [0, 1, 4])
def test_an_ipv4_header_length_under_5_words_is_refused(ihl: int) -> None:
    """Else the filter read the "port" from inside the IP header (an outside
    review: IHL 0, protocol UDP, total length 62201 passed as the SPA port)."""
    from scapy.layers.inet import IP

    packet = bytearray(bytes(IP(src=A4, dst=B4, proto=17, len=62201) / Raw(bytes(16))))
    packet[0] = 0x40 | ihl
    assert not passes(KNOCK, bytes(packet))
    packet[0] = 0x45
    packet[20:22], packet[22:24] = (1000).to_bytes(2, "big"), (62201).to_bytes(2, "big")  # a real UDP header
    assert passes(KNOCK, bytes(packet))
