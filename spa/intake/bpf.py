"""Classic BPF socket filters: the kernel drops what no carrier wants.

:func:`compile_filter` turns a :class:`Wanted` (echo requests, UDP ports, TCP
SYN ports) into a classic BPF program; :func:`attach` installs it on a socket.
Everything here but ``attach`` is pure, so the program is tested without root
by running it in a small interpreter over crafted packets (tests/unit).

Why a filter at all: a busy interface carries far more packets than Python
can look at. With the filter the kernel copies only candidate knocks to us,
so junk aimed at other ports costs us nothing and a flood at a knock port is
the only load that reaches Python.

The program sees the packet from its IP header on (``AF_PACKET`` with
``SOCK_DGRAM``) and checks, in order: that the packet was addressed to this
host at the link layer (the kernel's packet type is PACKET_HOST: not a frame
for another machine heard in promiscuous mode, nor a broadcast or multicast);
IP version nibble; for IPv4 that the header length is at least 5 words and the
packet is not a fragment (offset or more-fragments bit, the same rule as
:func:`spa.intake.packet.parse`), and the header length via the
``ldx 4*([0]&0xf)`` idiom so IPv4 options are honoured; then protocol,
ICMP type and code, TCP flags (SYN set, ACK clear) and destination port
ranges. It accepts with ``ret snaplen`` and rejects with ``ret 0``.

Not captured, by design: IPv6 packets whose fixed header's next-header is an
extension header (hop-by-hop, routing, destination options, fragment, ...).
Following a chain of them needs a loop, which classic BPF has not; no ping,
resolver or knock client adds them, so the filter only looks at the fixed
header's next-header field. ``parse`` can walk them, should packets ever
arrive by another path.

A load beyond the end of the packet ends a classic BPF program with 0, so a
truncated packet is refused without explicit length checks. The filter is a
pre-filter, not a parser: it may pass a malformed packet (a bad IPv4 total
length, say), which ``parse`` then refuses.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from .packet import ICMP, ICMPV6, TCP, UDP, Packet

Instruction = tuple[int, int, int, int]  # (code, jt, jf, k) as in struct sock_filter

# Opcode parts from linux/filter.h (classic BPF).
BPF_LD, BPF_LDX, BPF_ALU, BPF_JMP, BPF_RET = 0x00, 0x01, 0x04, 0x05, 0x06
BPF_W, BPF_H, BPF_B = 0x00, 0x08, 0x10
BPF_IMM, BPF_ABS, BPF_IND, BPF_MSH = 0x00, 0x20, 0x40, 0xA0
BPF_AND = 0x50
BPF_JA, BPF_JEQ, BPF_JGT, BPF_JGE, BPF_JSET = 0x00, 0x10, 0x20, 0x30, 0x40
BPF_K = 0x00

LD_ABS = BPF_LD | BPF_W | BPF_ABS
LDB_ABS = BPF_LD | BPF_B | BPF_ABS
LDH_ABS = BPF_LD | BPF_H | BPF_ABS
LDB_IND = BPF_LD | BPF_B | BPF_IND
LDH_IND = BPF_LD | BPF_H | BPF_IND
LDX_MSH = BPF_LDX | BPF_B | BPF_MSH
LDX_IMM = BPF_LDX | BPF_W | BPF_IMM
AND_K = BPF_ALU | BPF_AND | BPF_K
JA = BPF_JMP | BPF_JA
JEQ_K = BPF_JMP | BPF_JEQ | BPF_K
JGT_K = BPF_JMP | BPF_JGT | BPF_K
JGE_K = BPF_JMP | BPF_JGE | BPF_K
JSET_K = BPF_JMP | BPF_JSET | BPF_K
RET_K = BPF_RET | BPF_K

MAX_INSTRUCTIONS = 4096  # BPF_MAXINSNS: the kernel refuses longer programs
_MAX_CONDITIONAL = 255  # jt/jf are one byte
_RANGES_PER_GROUP = 100  # keeps every range check within a one-byte jump of its ret

# Ancillary load: ``ld [SKF_AD_OFF + SKF_AD_PKTTYPE]`` gives skb->pkt_type, not packet data.
SKF_AD_OFF = -0x1000
SKF_AD_PKTTYPE = 4
PKTTYPE = (SKF_AD_OFF + SKF_AD_PKTTYPE) & 0xFFFFFFFF
PACKET_HOST = 0  # linux/if_packet.h: addressed to us (BROADCAST 1, MULTICAST 2, OTHERHOST 3)

SO_ATTACH_FILTER = 26  # asm-generic/socket.h; not exported by Python's socket module

TCP_SYN, TCP_ACK = 0x02, 0x10
_V4_FRAGMENTED = 0x3FFF  # more-fragments bit | fragment offset


@dataclass(frozen=True)
class PortRange:
    """Destination ports ``low`` to ``high``, both included."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if not (isinstance(self.low, int) and isinstance(self.high, int)
                and 0 <= self.low <= self.high <= 0xFFFF):
            raise ValueError(f"port range must satisfy 0 <= low <= high <= 65535, not {self.low}-{self.high}")

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port <= self.high

    def __str__(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"


@dataclass(frozen=True)
class Wanted:
    """What the carriers want to see; everything else stays in the kernel.

    ``icmp_echo`` takes IPv4 and ICMPv6 echo requests, ``udp`` datagrams to
    those destination ports, ``tcp_syn`` TCP segments with SYN set and ACK
    clear (connection attempts, which is what a port-sequence client sends)
    to those ports.
    """

    icmp_echo: bool = False
    udp: tuple[PortRange, ...] = ()
    tcp_syn: tuple[PortRange, ...] = ()

    def __post_init__(self) -> None:
        for name in ("udp", "tcp_syn"):
            ranges = getattr(self, name)
            if not isinstance(ranges, tuple) or not all(isinstance(r, PortRange) for r in ranges):
                raise TypeError(f"Wanted.{name} must be a tuple of PortRange")

    def matches(self, packet: Packet) -> bool:
        """Whether a parsed packet (sent to this host) is one the filter lets through.

        The pure twin of the compiled filter (tests check that they agree).
        ``parse`` only returns echo *requests* for ICMP, so the ICMP case
        needs no type check here.
        """
        protocol = packet.protocol
        if protocol == UDP:
            return _within(self.udp, packet.port)
        if protocol == TCP:
            return packet.flags & (TCP_SYN | TCP_ACK) == TCP_SYN and _within(self.tcp_syn, packet.port)
        if protocol in (ICMP, ICMPV6):
            return self.icmp_echo
        return False


def _within(ranges: tuple[PortRange, ...], port: int) -> bool:
    return any(r.low <= port <= r.high for r in ranges)


def merge(ranges: Iterable[PortRange]) -> list[PortRange]:
    """Sort ranges and join overlapping or adjacent ones (fewer instructions)."""
    merged: list[PortRange] = []
    for r in sorted(ranges, key=lambda r: (r.low, r.high)):
        if merged and r.low <= merged[-1].high + 1:
            if r.high > merged[-1].high:
                merged[-1] = PortRange(merged[-1].low, r.high)
        else:
            merged.append(r)
    return merged


# --- a tiny assembler: labels instead of hand-counted jump offsets -----------
# Public: the worker's seccomp filter (spa/daemon/sandbox.py) is classic BPF too.

@dataclass(frozen=True)
class Label:
    name: str


@dataclass(frozen=True)
class Op:
    """One instruction; ``true``/``false`` name labels (None: the next instruction)."""

    code: int
    k: int = 0
    true: str | None = None
    false: str | None = None


Item = Label | Op


def assemble(items: list[Item]) -> list[Instruction]:
    """Resolve labels to jump offsets; raises if the program is too long or a
    conditional jump (one byte) cannot reach its label."""
    where: dict[str, int] = {}
    count = 0
    for item in items:
        if isinstance(item, Label):
            where[item.name] = count
        else:
            count += 1
    if count > MAX_INSTRUCTIONS:
        raise ValueError(f"the packet filter would need {count} instructions and the kernel takes at most "
                         f"{MAX_INSTRUCTIONS}: want fewer or wider port ranges")
    program: list[Instruction] = []
    for item in items:
        if isinstance(item, Label):
            continue
        here = len(program) + 1  # offsets count from the next instruction
        if item.code == JA:
            target = where[item.true] if item.true is not None else here
            program.append((JA, 0, 0, target - here))
            continue
        jt = where[item.true] - here if item.true is not None else 0
        jf = where[item.false] - here if item.false is not None else 0
        if not (0 <= jt <= _MAX_CONDITIONAL and 0 <= jf <= _MAX_CONDITIONAL):
            raise AssertionError(f"conditional jump out of reach ({jt}, {jf}): layout bug")
        program.append((item.code, jt, jf, item.k))
    return program


def _port_checks(prefix: str, ranges: list[PortRange], snaplen: int) -> list[Item]:
    """Accept if A (a port) is in one of the sorted, disjoint ``ranges``.

    Walked in ascending order: below a range's low end means below every range
    still ahead, so reject at once. Each group of ranges ends in its own pair of
    ``ret`` instructions so every conditional jump stays within 255.
    """
    items: list[Item] = []
    groups = [ranges[i:i + _RANGES_PER_GROUP] for i in range(0, len(ranges), _RANGES_PER_GROUP)]
    for number, group in enumerate(groups):
        accept, reject = f"{prefix}{number}.accept", f"{prefix}{number}.reject"
        beyond = f"{prefix}{number + 1}" if number + 1 < len(groups) else reject
        items.append(Label(f"{prefix}{number}"))
        for index, r in enumerate(group):
            above = beyond if index == len(group) - 1 else None
            if r.low == r.high:
                items.append(Op(JEQ_K, r.low, accept, above))
                continue
            if r.low > 0:
                items.append(Op(JGE_K, r.low, None, reject))
            items.append(Op(JGT_K, r.high, above, accept))
        items += [Label(accept), Op(RET_K, snaplen), Label(reject), Op(RET_K, 0)]
    return items


def compile_filter(wanted: Wanted, snaplen: int = 2048) -> list[Instruction]:
    """Compile ``wanted`` to classic BPF that accepts with ``ret snaplen``.

    Packets longer than ``snaplen`` are cut to it, and ``parse`` then refuses
    them (their IP length exceeds what arrived): a knock is far shorter.
    Raises ValueError if the ranges need more than 4096 instructions
    (about 2,000 disjoint ranges; adjacent and overlapping ones are merged).
    """
    if not 64 <= snaplen <= 0x40000:
        raise ValueError(f"snaplen must be 64-262144 bytes, not {snaplen}")
    udp, tcp = merge(wanted.udp), merge(wanted.tcp_syn)
    if not (wanted.icmp_echo or udp or tcp):
        return [(RET_K, 0, 0, 0)]

    def dispatch(echo_protocol: int, echo_label: str) -> list[Item]:
        # Protocol in A, transport header offset in X. Long-distance jumps to
        # the port blocks go through ``ja`` (32-bit offset): only it can reach
        # past a long list of ranges.
        cases = []
        if wanted.icmp_echo:
            cases.append((echo_protocol, echo_label))
        if udp:
            cases.append((UDP, "to.udp"))
        if tcp:
            cases.append((TCP, "to.tcp"))
        return [Op(JEQ_K, protocol, label, "reject" if i == len(cases) - 1 else None)
                for i, (protocol, label) in enumerate(cases)]

    items: list[Item] = [
        # Only frames sent to this host: when an interface is promiscuous
        # (a tcpdump running), knocks meant for other machines pass by too.
        Op(LD_ABS, PKTTYPE),
        Op(JEQ_K, PACKET_HOST, None, "reject"),
        Op(LDB_ABS, 0),
        Op(AND_K, 0xF0),
        Op(JEQ_K, 0x40, None, "v6"),
        # IPv4: no fragments, X = header length (IHL * 4, options included).
        Op(LDH_ABS, 6),
        Op(JSET_K, _V4_FRAGMENTED, "reject", None),
        # A header length under 5 words would read the "ports" from the IP
        # header itself (an outside review sent IHL 0 with total length 62201).
        Op(LDB_ABS, 0),
        Op(AND_K, 0x0F),
        Op(JGE_K, 5, None, "reject"),
        Op(LDX_MSH, 0),
        Op(LDB_ABS, 9),
        *dispatch(ICMP, "icmp4"),
        Label("v6"),
        Op(JEQ_K, 0x60, None, "reject"),
        # IPv6: only the fixed header's next-header; X = 40, the fixed header.
        Op(LDX_IMM, 40),
        Op(LDB_ABS, 6),
        *dispatch(ICMPV6, "icmp6"),
    ]
    if wanted.icmp_echo:
        # Type and code in one halfword: echo request, code 0.
        items += [
            Label("icmp4"), Op(LDH_IND, 0), Op(JEQ_K, 0x0800, "accept", "reject"),
            Label("icmp6"), Op(LDH_IND, 0), Op(JEQ_K, 0x8000, "accept", "reject"),
        ]
    if udp:
        items += [Label("to.udp"), Op(JA, 0, "udp")]
    if tcp:
        items += [Label("to.tcp"), Op(JA, 0, "tcp")]
    items += [Label("accept"), Op(RET_K, snaplen), Label("reject"), Op(RET_K, 0)]
    if udp:
        items += [Label("udp"), Op(LDH_IND, 2), *_port_checks("udp.", udp, snaplen)]
    if tcp:
        items += [
            Label("tcp"),
            Op(LDB_IND, 13),
            Op(AND_K, TCP_SYN | TCP_ACK),
            Op(JEQ_K, TCP_SYN, "tcp.port", None),
            Op(RET_K, 0),
            Label("tcp.port"),
            Op(LDH_IND, 2),
            *_port_checks("tcp.", tcp, snaplen),
        ]
    return assemble(items)


def attach(sock: socket.socket, program: list[Instruction]) -> None:
    """Install ``program`` on ``sock`` (SO_ATTACH_FILTER).

    The kernel copies and checks the program during the call, so the buffer
    only has to live until it returns. A program the kernel refuses raises
    OSError (EINVAL).
    """
    if not 1 <= len(program) <= MAX_INSTRUCTIONS:
        raise ValueError(f"a filter has 1-{MAX_INSTRUCTIONS} instructions, not {len(program)}")
    code = b"".join(struct.pack("=HBBI", *instruction) for instruction in program)
    buffer = ctypes.create_string_buffer(code, len(code))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; } in native layout.
    fprog = struct.pack("@HP", len(program), ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
