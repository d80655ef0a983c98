"""A small authoritative DNS server: the parent zone that delegates the knock zone.

In the demo world this is ``example.test``'s name server. It holds the
zone's SOA and NS, the address of its own name server, and one or more
delegations: for ``knock.example.test`` it answers every name at or below
the cut with a referral (NS in the authority section, glue in the
additional section, AA clear), exactly what a registry or hosting
provider's server sends. Unbound, asked for a token name, first reaches
this server (QNAME-minimised, 0x20-cased), follows the referral to the spa
server, and only then sends the token there: real delegation, not
forwarding. Every other name is NXDOMAIN (or NODATA with
``--empty-names``, which makes it a stand-in for spa's own answers in
tests), anything outside the zone REFUSED.

Run inside a namespace::

    python -m spa.demo.parent_dns --listen 192.0.2.54 --zone example.test \\
        --ns ns1.example.test 192.0.2.54 \\
        --delegate knock.example.test ns1.knock.example.test 192.0.2.10

It answers over UDP and TCP on every ``--listen`` address, prints
``ready`` once bound, then one line per query: source, transport, the name
exactly as received (case included), type, and what it answered. It runs
until killed. dnslib is plenty for a handful of queries a second; spa's
own DNS path does not use it (docs/dns.md).
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from dnslib import AAAA, EDNS0, NS, QTYPE, RCODE, RR, SOA, A, DNSRecord
from dnslib.dns import DNSError

TCP_IDLE = 5.0  # seconds a TCP connection may sit silent (RFC 7766 suggests a few)
MAX_TCP = 32  # concurrent TCP connections; more are closed at once


@dataclass(frozen=True)
class NameServer:
    """A name server's name and addresses (glue when the name lies inside the zone it serves)."""

    name: str
    addresses: tuple[str, ...]

    def records(self, owner: str, qtype: int | None, ttl: int) -> list[RR]:
        """A/AAAA records for this name server (of ``qtype`` only, if given)."""
        records = []
        for text in self.addresses:
            address = ipaddress.ip_address(text)
            rtype = QTYPE.A if address.version == 4 else QTYPE.AAAA
            if qtype is None or qtype in (rtype, QTYPE.ANY):
                rdata = A(text) if address.version == 4 else AAAA(text)
                records.append(RR(owner, rtype, rdata=rdata, ttl=ttl))
        return records


@dataclass(frozen=True)
class Delegation:
    """A zone cut: ``child`` is served by ``nameserver``."""

    child: str
    nameserver: NameServer


@dataclass(frozen=True)
class Zone:
    """What the server knows: its zone, its own name server, the delegations below it."""

    name: str
    nameserver: NameServer
    delegations: tuple[Delegation, ...] = ()
    ttl: int = 60
    empty_names: bool = False  # NODATA instead of NXDOMAIN for unknown names (like spa)

    def soa(self) -> RR:
        rname = f"hostmaster.{self.name}"
        times = (1, 3600, 600, 86400, self.ttl)
        return RR(self.name, QTYPE.SOA, rdata=SOA(self.nameserver.name, rname, times), ttl=self.ttl)


def _lower(name: object) -> str:
    return str(name).rstrip(".").lower()


def _at_or_below(name: str, zone: str) -> bool:
    return name == zone or name.endswith("." + zone)


def answer(query: DNSRecord, zone: Zone) -> tuple[DNSRecord | None, str]:
    """The response to ``query`` (None: stay silent) and a word for the log."""
    header = query.header
    if header.qr:
        return None, "ignored response"
    reply = query.reply(ra=0, aa=1)
    if any(record.rtype == QTYPE.OPT for record in query.ar):
        reply.add_ar(EDNS0(udp_len=1232))
    if header.opcode != 0:
        reply.header.aa = 0
        reply.header.rcode = RCODE.NOTIMP
        reply.questions = []
        return reply, "NOTIMP"
    if len(query.questions) != 1:
        reply.header.aa = 0
        reply.header.rcode = RCODE.FORMERR
        return reply, "FORMERR"
    question = query.q
    name, qtype = _lower(question.qname), question.qtype
    if not _at_or_below(name, zone.name):
        reply.header.aa = 0
        reply.header.rcode = RCODE.REFUSED
        return reply, "REFUSED"
    for delegation in zone.delegations:
        if not _at_or_below(name, delegation.child):
            continue
        if name == delegation.child and qtype == QTYPE.DS:
            reply.add_auth(zone.soa())  # DS lives on the parent's side: none here (unsigned)
            return reply, "NODATA (no DS)"
        reply.header.aa = 0
        server = delegation.nameserver
        reply.add_auth(RR(delegation.child, QTYPE.NS, rdata=NS(server.name), ttl=zone.ttl))
        if _at_or_below(_lower(server.name), delegation.child):
            for record in server.records(owner=server.name, qtype=None, ttl=zone.ttl):
                reply.add_ar(record)
        return reply, f"referral to {server.name}"
    if name == zone.name and qtype in (QTYPE.SOA, QTYPE.ANY):
        reply.add_answer(zone.soa())
        return reply, "SOA"
    if name == zone.name and qtype == QTYPE.NS:
        reply.add_answer(RR(question.qname, QTYPE.NS, rdata=NS(zone.nameserver.name), ttl=zone.ttl))
        for record in zone.nameserver.records(owner=zone.nameserver.name, qtype=None, ttl=zone.ttl):
            reply.add_ar(record)
        return reply, "NS"
    if name == _lower(zone.nameserver.name):
        records = zone.nameserver.records(owner=str(question.qname), qtype=qtype, ttl=zone.ttl)
        if records:
            for record in records:
                reply.add_answer(record)
            return reply, "address"
    reply.add_auth(zone.soa())
    exists = name == zone.name or name == _lower(zone.nameserver.name) or zone.empty_names or any(
        delegation.child.endswith("." + name) for delegation in zone.delegations)  # empty non-terminal
    if exists:
        return reply, "NODATA"
    reply.header.rcode = RCODE.NXDOMAIN
    return reply, "NXDOMAIN"


class Server:
    """UDP and TCP on each address; one line per query on stdout."""

    def __init__(self, zone: Zone, addresses: Sequence[str], port: int) -> None:
        self.zone = zone
        self.lock = threading.Lock()
        self.tcp_slots = threading.BoundedSemaphore(MAX_TCP)
        self.udp: list[socket.socket] = []
        self.tcp: list[socket.socket] = []
        for text in addresses:
            family = socket.AF_INET6 if ipaddress.ip_address(text).version == 6 else socket.AF_INET
            udp = socket.socket(family, socket.SOCK_DGRAM)
            udp.bind((text, port))
            self.udp.append(udp)
            tcp = socket.socket(family, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((text, port))
            tcp.listen(16)
            self.tcp.append(tcp)

    def say(self, line: str) -> None:
        with self.lock:
            print(line, flush=True)

    def respond(self, data: bytes, source: str, transport: str) -> bytes | None:
        try:
            query = DNSRecord.parse(data)
        except (DNSError, ValueError, IndexError):
            self.say(f"junk {source} {transport} {len(data)} bytes")
            return None
        reply, outcome = answer(query, self.zone)
        question = query.questions[0] if query.questions else None
        shown = f"{str(question.qname).rstrip('.')} {QTYPE.get(question.qtype)}" if question else "-"
        self.say(f"query {source} {transport} {shown} -> {outcome}")
        return reply.pack() if reply is not None else None

    def serve_udp(self, sock: socket.socket) -> None:
        while True:
            data, peer = sock.recvfrom(65535)
            response = self.respond(data, peer[0], "udp")
            if response is not None:
                sock.sendto(response, peer)

    def serve_tcp(self, listener: socket.socket) -> None:
        while True:
            connection, peer = listener.accept()
            if not self.tcp_slots.acquire(blocking=False):
                connection.close()
                continue
            threading.Thread(target=self.tcp_connection, args=(connection, peer[0]), daemon=True).start()

    def tcp_connection(self, connection: socket.socket, source: str) -> None:
        try:
            with connection:
                connection.settimeout(TCP_IDLE)
                while True:
                    header = _read_exactly(connection, 2)
                    if header is None:
                        return
                    message = _read_exactly(connection, int.from_bytes(header, "big"))
                    if message is None:
                        return
                    response = self.respond(message, source, "tcp")
                    if response is None:
                        return
                    connection.sendall(len(response).to_bytes(2, "big") + response)
        except OSError:
            pass  # idle timeout or the peer went away
        finally:
            self.tcp_slots.release()

    def run(self) -> None:
        for sock in self.udp:
            threading.Thread(target=self.serve_udp, args=(sock,), daemon=True).start()
        for listener in self.tcp:
            threading.Thread(target=self.serve_tcp, args=(listener,), daemon=True).start()
        self.say("ready")
        threading.Event().wait()  # until killed


def _read_exactly(connection: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def parse_args(argv: Sequence[str] | None = None) -> tuple[Zone, list[str], int]:
    parser = argparse.ArgumentParser(prog="python -m spa.demo.parent_dns", description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", action="append", required=True, metavar="ADDRESS")
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--zone", required=True)
    parser.add_argument("--ns", nargs="+", required=True, metavar=("NAME", "ADDRESS"),
                        help="the zone's own name server and its addresses")
    parser.add_argument("--delegate", nargs="+", action="append", default=[], metavar=("CHILD", "NS"),
                        help="CHILD NS [ADDRESS...]: a zone cut, with glue if NS lies under CHILD")
    parser.add_argument("--ttl", type=int, default=60)
    parser.add_argument("--empty-names", action="store_true",
                        help="answer NODATA, not NXDOMAIN, for every unknown name in the zone")
    args = parser.parse_args(argv)
    delegations = []
    for item in args.delegate:
        if len(item) < 2:
            parser.error("--delegate needs CHILD and NS")
        delegations.append(Delegation(_lower(item[0]), NameServer(_lower(item[1]), tuple(item[2:]))))
    zone = Zone(_lower(args.zone), NameServer(_lower(args.ns[0]), tuple(args.ns[1:])), tuple(delegations),
                args.ttl, args.empty_names)
    return zone, args.listen, args.port


def main(argv: Sequence[str] | None = None) -> None:
    zone, addresses, port = parse_args(argv)
    Server(zone, addresses, port).run()


if __name__ == "__main__":
    main()
