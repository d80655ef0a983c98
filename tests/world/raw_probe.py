"""Raw probes from inside a namespace: exactly what comes back from a port.

Run as a script in a client namespace (scapy needs a raw socket), printing
one JSON document::

    raw_probe.py tcp HOST PORT...       a SYN (with 4 data bytes) and a bare ACK to each port
    raw_probe.py udp HOST PORT...       one datagram to each port
    raw_probe.py burst HOST COUNT STEP...  per STEP (a port, or sleep:SECONDS): COUNT datagrams back to back
    raw_probe.py shortudp HOST PORT...  a datagram whose UDP length field (4) is under its header's 8
    raw_probe.py proto HOST NUMBER...   an empty packet of each IP protocol NUMBER

``tcp`` and ``udp`` print, per port, the reply's header fields (or null for
no reply), with the port numbers left out so two ports' answers compare
with ``==``; the TCP ones add how seq/ack relate to the probe, the ICMP
ones whether the quoted bytes are the probe's own. ``burst`` prints how
many ICMP errors came back for each port step, told apart by the source
port their quote names (each step sends from its own). Every probe of one run uses the same sequence
numbers, payload and source port, so nothing but the port differs.
"""

from __future__ import annotations

import json
import random
import sys
from typing import Any

from scapy.config import conf
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror
from scapy.layers.inet6 import ICMPv6DestUnreach, IPerror6, IPv6
from scapy.packet import Packet, Raw
from scapy.sendrecv import sr1

WAIT = 2.0  # seconds to wait for answers; replies on a veth take well under 1 ms
PAYLOAD = b"spa?"


def network(host: str) -> Packet:
    return IPv6(dst=host) if ":" in host else IP(dst=host, flags="DF")


def ip_fields(reply: Packet) -> dict[str, Any]:
    """The reply's IP header, without addresses (the same for every port)."""
    if IPv6 in reply and not isinstance(reply, IP):
        six = reply[IPv6]
        return {"version": 6, "hlim": six.hlim, "tc": six.tc, "fl": six.fl, "plen": six.plen}
    four = reply[IP]
    return {"version": 4, "ttl": four.ttl, "tos": four.tos, "id": four.id, "flags": str(four.flags),
            "len": four.len, "options": bytes(four.options).hex() if four.options else ""}


def tcp_answer(probe: Packet, reply: Packet | None) -> dict[str, Any] | None:
    if reply is None or TCP not in reply:
        return None
    sent, got = probe[TCP], reply[TCP]
    end = sent.seq + len(bytes(sent.payload)) + (1 if "S" in sent.flags else 0) + (1 if "F" in sent.flags else 0)
    return {
        **ip_fields(reply),
        "flags": str(got.flags),
        "seq": got.seq,
        "ack": got.ack,
        # How the answer relates to the probe: what the kernel's RST rule fixes.
        "ack_is_probe_end": got.ack == end % 2**32,
        "seq_is_probe_ack": got.seq == sent.ack,
        "window": got.window,
        "dataofs": got.dataofs,
        "urgptr": got.urgptr,
        "options": [str(option) for option in got.options],
        "payload": bytes(got.payload).hex(),
        "to_probe_port": got.dport == sent.sport,
    }


def icmp_answer(probe: Packet, reply: Packet | None) -> dict[str, Any] | None:
    if reply is None:
        return None
    if ICMP in reply:
        error, quoted = reply[ICMP], reply[IPerror]
    elif ICMPv6DestUnreach in reply:
        error, quoted = reply[ICMPv6DestUnreach], reply[IPerror6]
    else:
        return {"other": reply.summary()}
    return {
        **ip_fields(reply),
        "type": error.type,
        "code": error.code,
        # The quote is the probe as it arrived: compare it with what we sent.
        "quote_is_probe": bytes(quoted) == bytes(probe)[:len(bytes(quoted))],
        "quote_length": len(bytes(quoted)),
        "to_probe_port": UDPerror in reply and reply[UDPerror].sport == probe[UDP].sport,
    }


def tcp(host: str, ports: list[int]) -> dict[str, Any]:
    sport, seq, ack = random.randint(40000, 60000), random.getrandbits(32), random.getrandbits(32)
    found = {}
    for port in ports:
        syn = network(host) / TCP(sport=sport, dport=port, flags="S", seq=seq, window=29200) / Raw(PAYLOAD)
        bare = network(host) / TCP(sport=sport, dport=port, flags="A", seq=seq, ack=ack, window=29200)
        found[str(port)] = {
            "syn": tcp_answer(syn, sr1(syn, timeout=WAIT, verbose=0)),
            "ack": tcp_answer(bare, sr1(bare, timeout=WAIT, verbose=0)),
        }
    return found


def udp(host: str, ports: list[int]) -> dict[str, Any]:
    sport = random.randint(40000, 60000)
    found = {}
    for port in ports:
        datagram = network(host) / UDP(sport=sport, dport=port) / Raw(PAYLOAD * 8)
        # sr1 matches an ICMP error to the probe it quotes.
        found[str(port)] = icmp_answer(datagram, sr1(datagram, timeout=WAIT, verbose=0))
    return found


def burst(host: str, count: int, steps: list[str]) -> dict[str, Any]:
    """Datagrams from plain UDP sockets (nothing slower between steps than ``sleep:``),
    and an AF_PACKET sniffer counting the ICMP errors that come back."""
    import socket
    import time

    from scapy.sendrecv import AsyncSniffer

    six = ":" in host

    def source_port(packet: Packet) -> int | None:
        if not six and ICMP in packet and packet[ICMP].type == 3 and UDPerror in packet:
            return int(packet[UDPerror].sport)
        if six and ICMPv6DestUnreach in packet and UDPerror in packet:
            return int(packet[UDPerror].sport)
        return None

    sniffer = AsyncSniffer(lfilter=lambda packet: source_port(packet) is not None, store=True)
    sniffer.start()
    time.sleep(0.5)  # the sniffer's socket is open before the first datagram goes
    family = socket.AF_INET6 if six else socket.AF_INET
    sockets: list[socket.socket] = []
    for step in steps:
        if step.startswith("sleep:"):
            time.sleep(float(step.removeprefix("sleep:")))
            continue
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind(("::" if six else "0.0.0.0", 0))
        sockets.append(sock)
        for _ in range(count):
            sock.sendto(PAYLOAD, (host, int(step)))
    time.sleep(WAIT)
    caught = sniffer.stop() or []
    for_port = [source_port(packet) for packet in caught]
    errors = [for_port.count(sock.getsockname()[1]) for sock in sockets]
    for sock in sockets:
        sock.close()
    return {"sent": count, "errors": errors}


def short_udp(host: str, ports: list[int]) -> dict[str, Any]:
    """The kernel drops such a datagram unanswered; so must the guard."""
    found = {}
    for port in ports:
        datagram = network(host) / UDP(sport=random.randint(40000, 60000), dport=port, len=4) / Raw(PAYLOAD * 2)
        reply = sr1(datagram, timeout=WAIT, verbose=0)
        found[str(port)] = None if reply is None else reply.summary()
    return found


def protocols(host: str, numbers: list[int]) -> dict[str, Any]:
    """What comes back for an empty packet of another protocol (the kernel: protocol unreachable)."""
    found = {}
    for number in numbers:
        packet = IPv6(dst=host, nh=number) if ":" in host else IP(dst=host, proto=number)
        reply = sr1(packet, timeout=WAIT, verbose=0)
        if reply is None:
            found[str(number)] = None
        elif ICMP in reply:
            found[str(number)] = [reply[ICMP].type, reply[ICMP].code]
        else:
            layer = reply[IPv6].payload
            found[str(number)] = [getattr(layer, "type", None), getattr(layer, "code", None)]
    return found


def main(argv: list[str]) -> int:
    conf.verb = 0
    kind, host, *rest = argv
    if kind == "tcp":
        result = tcp(host, [int(p) for p in rest])
    elif kind == "udp":
        result = udp(host, [int(p) for p in rest])
    elif kind == "burst":
        result = burst(host, int(rest[0]), rest[1:])
    elif kind == "shortudp":
        result = short_udp(host, [int(p) for p in rest])
    elif kind == "proto":
        result = protocols(host, [int(p) for p in rest])
    else:
        print(f"unknown probe {kind!r}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
