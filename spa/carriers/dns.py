"""The DNS carrier: spa as the authoritative name server of a knock zone.

A knock is a query for ``<token>.knock.example.com``: one label directly
under the zone (resolvers minimise QNAMEs, so the first query we see for a
deeper name would not carry the whole token). This module is pure code: the
daemon owns the sockets and hands us each message.

- :func:`answer` turns a query into the wire answer to send back and the
  token label it carried. Answers never depend on the token: spa cannot know
  whether a token is valid when it answers, and must not tell anyway.
- :func:`sniff` reads only the label, for when another server owns port 53.
- :func:`knock` classifies a label as an OTP code, a compact or an extended
  token, or nothing.
- :func:`read_tcp` and :func:`frame_tcp` handle DNS-over-TCP length framing.

Why not dnslib, which the project pins: parse, reply and pack through it
runs at about 19k queries/s on one core, and a junk flood goes through this
path. Queries are simple (a header, one question, at most an OPT record) and
our answers are a handful of fixed shapes, so a strict reader and
precomputed record templates are short, easy to check, several times faster,
and can fail in exactly one way (:class:`_Malformed`) instead of dnslib's
several exception types. The tests use dnslib as the independent reference
on both sides. Every rule is explained in docs/dns.md.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

from spa.core import compact, encoding, otp
from spa.core.events import Carrier, Form, IPAddress, Knock

# Sizes. RFC 1035 guarantees 512 bytes over UDP; EDNS0 lets a client ask for
# more, and 1232 is the DNS Flag Day 2020 ceiling that avoids IP fragmentation.
UDP_SIZE = 512
EDNS_SIZE = 1232
TCP_SIZE = 65535  # the daemon passes this as max_size for DNS over TCP
MAX_TTL = 5

# RR types and classes we look at.
TYPE_A = 1
TYPE_NS = 2
TYPE_SOA = 6
TYPE_AAAA = 28
TYPE_OPT = 41
TYPE_IXFR = 251
TYPE_AXFR = 252
TYPE_ANY = 255
CLASS_IN = 1

# Response codes (BADVERS needs the OPT record's extended RCODE bits).
NOERROR = 0
FORMERR = 1
NOTIMP = 4
REFUSED = 5
BADVERS = 16

# SOA timers. Nothing transfers this zone, so refresh/retry/expire only have
# to be sane; the minimum (negative-caching TTL, RFC 2308) is the zone's TTL.
SOA_REFRESH = 3600
SOA_RETRY = 600
SOA_EXPIRE = 86400

_HOST_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# What a label must look like to be handed to the daemon: every token form
# (base32 a-z2-7, OTP a-z0-9 and '-') fits, and nothing that could garble a
# log line does.
_TOKEN_LABEL = re.compile(rb"^[a-z0-9_-]{1,63}$")
_HEADER = struct.Struct(">HHHHHH")
_RR_FIXED = struct.Struct(">HHIH")  # type, class, ttl, rdlength
_QTAIL = struct.Struct(">HH")  # qtype, qclass
_POINTER = struct.Struct(">H")


class _Malformed(Exception):
    """The message is not well-formed DNS; the only error the reader raises."""


def _name_labels(text: str, what: str) -> tuple[bytes, ...]:
    """Validate a host name (LDH labels) and return its lowercase labels."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a string, not {type(text).__name__}")
    name = text.strip().lower()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise ValueError(f"{what} is empty (the root zone cannot be a knock zone)")
    labels = name.split(".")
    for label in labels:
        if not _HOST_LABEL.fullmatch(label):
            raise ValueError(
                f"{what} {text!r}: label {label!r} is not 1-63 letters, digits "
                "or inner hyphens"
            )
    if len(name) > 253:
        raise ValueError(f"{what} {text!r} is longer than 253 characters")
    return tuple(label.encode("ascii") for label in labels)


def _wire(labels: tuple[bytes, ...]) -> bytes:
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"


def _within(labels: tuple[bytes, ...], zone: tuple[bytes, ...]) -> bool:
    """Whether a name is the zone or below it (labels already lowercase)."""
    return len(labels) >= len(zone) and labels[len(labels) - len(zone):] == zone


class _Segments(NamedTuple):
    """Record bytes with a gap wherever the zone name goes.

    The zone name is written as a compression pointer into the question we
    echo, so its offset changes with every query; ``pointer.join(parts)``
    fills the gaps. Names outside the zone are written out in full.
    """

    parts: tuple[bytes, ...]
    records: int  # resource records in these bytes

    def render(self, pointer: bytes) -> bytes:
        return pointer.join(self.parts)


_EMPTY = _Segments((b"",), 0)


def _concat(*segments: _Segments) -> _Segments:
    """Join record templates into one (a gap stays a gap)."""
    parts: list[bytes] = [b""]
    for item in segments:
        parts[-1] += item.parts[0]
        parts.extend(item.parts[1:])
    return _Segments(tuple(parts), sum(item.records for item in segments))


class _NameSplitter:
    """Writes names relative to the zone: in-zone names end in a gap."""

    def __init__(self, zone: tuple[bytes, ...]) -> None:
        self.zone = zone

    def parts(self, labels: tuple[bytes, ...]) -> list[bytes]:
        """The name as [prefix, suffix]: the zone pointer goes between them."""
        if _within(labels, self.zone):
            return [_wire(labels[: len(labels) - len(self.zone)])[:-1], b""]
        return [_wire(labels)]


def _record(splitter: _NameSplitter, owner: tuple[bytes, ...], rtype: int, ttl: int,
            rdata: list[bytes]) -> _Segments:
    """One resource record; ``rdata`` is a list of byte runs with zone gaps."""
    gaps = len(rdata) - 1
    rdlength = sum(len(part) for part in rdata) + 2 * gaps
    owner_parts = splitter.parts(owner)
    fixed = _RR_FIXED.pack(rtype, CLASS_IN, ttl, rdlength)
    parts = owner_parts[:-1] + [owner_parts[-1] + fixed + rdata[0]] + rdata[1:]
    return _Segments(tuple(parts), 1)


class _Plan(NamedTuple):
    """Everything precomputed from a Zone that answering needs."""

    wire: bytes  # the zone name in wire form, lowercase
    labels: int  # how many labels the zone name has
    soa: _Segments
    ns: _Segments
    glue: _Segments  # every A/AAAA for in-zone name servers
    hosts: dict[bytes, tuple[_Segments, _Segments, _Segments]]  # wire name -> (A, AAAA, both)


@dataclass(frozen=True)
class Zone:
    """The knock zone spa is authoritative for, and what it answers at the apex.

    Build it with :meth:`build` (or directly: the same checks run). Names are
    validated and lowercased; ``contact`` may be written ``user@example.com``.
    ``addresses`` are the A/AAAA records of every name server inside the zone
    (glue); they are refused when no name server lies inside the zone, since
    nothing would ever serve them.
    """

    name: str
    nameservers: tuple[str, ...]
    addresses: tuple[IPAddress, ...]
    ttl: int = 1
    contact: str = ""
    serial: int = 1
    _plan: _Plan = field(init=False, repr=False, compare=False, hash=False)

    @classmethod
    def build(cls, name: str, nameservers: tuple[str, ...] = (),
              addresses: tuple[IPAddress, ...] = (), ttl: int = 1) -> Zone:
        """A zone with defaults: name server ``ns1.<zone>``, contact ``hostmaster.<zone>``."""
        return cls(name, tuple(nameservers), tuple(addresses), ttl)

    def __post_init__(self) -> None:
        zone = _name_labels(self.name, "zone name")
        zone_text = b".".join(zone).decode()
        if len(zone_text) > 253 - 64:
            raise ValueError(
                f"zone name {self.name!r} is longer than 189 characters: "
                "a 63-character token label would not fit under it"
            )
        if isinstance(self.ttl, bool) or not isinstance(self.ttl, int) or not 0 <= self.ttl <= MAX_TTL:
            raise ValueError(f"ttl must be 0-{MAX_TTL} seconds (tokens must not be cached), not {self.ttl!r}")
        if isinstance(self.serial, bool) or not isinstance(self.serial, int) or not 1 <= self.serial <= 0xFFFFFFFF:
            raise ValueError(f"serial must be 1-4294967295, not {self.serial!r}")
        if isinstance(self.nameservers, str):
            raise ValueError("nameservers must be a tuple of names, not one string")
        servers: list[tuple[bytes, ...]] = []
        for server in self.nameservers or (f"ns1.{zone_text}",):
            labels = _name_labels(server, "name server")
            if labels not in servers:
                servers.append(labels)
        inside = [labels for labels in servers if _within(labels, zone)]
        addresses: list[IPAddress] = []
        for address in self.addresses:
            if not isinstance(address, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
                raise ValueError(f"address {address!r} is not an IPv4Address or IPv6Address")
            if address not in addresses:
                addresses.append(address)
        if addresses and not inside:
            raise ValueError(
                "addresses are glue for name servers inside the zone, but none of "
                + ", ".join(b".".join(labels).decode() for labels in servers)
                + f" lies inside {zone_text}"
            )
        contact = self.contact or f"hostmaster.{zone_text}"
        if "@" in contact:
            local, _, domain = contact.partition("@")
            if "." in local or not local:
                raise ValueError(f"contact {contact!r}: the part before @ must be one label")
            contact = f"{local}.{domain}"
        contact_labels = _name_labels(contact, "contact")
        object.__setattr__(self, "name", zone_text)
        object.__setattr__(self, "nameservers", tuple(b".".join(s).decode() for s in servers))
        object.__setattr__(self, "addresses", tuple(addresses))
        object.__setattr__(self, "contact", b".".join(contact_labels).decode())
        object.__setattr__(self, "_plan", self._make_plan(zone, servers, inside, contact_labels))

    def _make_plan(self, zone: tuple[bytes, ...], servers: list[tuple[bytes, ...]],
                   inside: list[tuple[bytes, ...]], contact: tuple[bytes, ...]) -> _Plan:
        split = _NameSplitter(zone)
        ttl = self.ttl
        timers = struct.pack(">IIIII", self.serial, SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, ttl)
        mname, rname = split.parts(servers[0]), split.parts(contact)
        rdata = mname[:-1] + [mname[-1] + rname[0]] + rname[1:]
        rdata[-1] += timers
        soa = _record(split, zone, TYPE_SOA, ttl, rdata)
        ns = _concat(*(_record(split, zone, TYPE_NS, ttl, split.parts(s)) for s in servers))
        hosts: dict[bytes, tuple[_Segments, _Segments, _Segments]] = {}
        for host in inside:
            four = _concat(*(_record(split, host, TYPE_A, ttl, [a.packed])
                             for a in self.addresses if a.version == 4))
            six = _concat(*(_record(split, host, TYPE_AAAA, ttl, [a.packed])
                            for a in self.addresses if a.version == 6))
            hosts[_wire(host)] = (four, six, _concat(four, six))
        glue = _concat(*(both for _, _, both in hosts.values()))
        return _Plan(_wire(zone), len(zone), soa, ns, glue, hosts)


@dataclass(frozen=True)
class Query:
    """What one DNS message meant: the token label it carried and our reply.

    ``label`` is set only for a well-formed IN-class query whose name is
    exactly one label under the zone (lowercased); ``response`` is None when
    nothing must be sent (not DNS, a response, or unparsable).
    """

    label: str | None
    response: bytes | None


class _Parsed(NamedTuple):
    ident: int
    flags: int
    qdcount: int
    question: bytes  # the question section exactly as received (0x20 case kept)
    starts: tuple[int, ...]  # offset of each QNAME label in ``question``
    qtype: int
    qclass: int
    opt: tuple[int, int, int] | None  # (payload size, version, DO bit) of the one good OPT
    bad_opt: bool  # more than one OPT, or an OPT not owned by the root
    trailing: bool  # bytes after the last record


def _skip_name(message: bytes, pos: int, end: int) -> int:
    """Step over a name we never read; a compression pointer ends it.

    Pointers are not followed, so a loop cannot hang us; one that does not
    point back into the message before itself is malformed.
    """
    while True:
        if pos >= end:
            raise _Malformed("name runs past the end")
        length = message[pos]
        if length == 0:
            return pos + 1
        if length >= 0xC0:
            if pos + 2 > end:
                raise _Malformed("pointer runs past the end")
            target = (length & 0x3F) << 8 | message[pos + 1]
            if not 12 <= target < pos:
                raise _Malformed("pointer does not point backwards into the message")
            return pos + 2
        if length > 63:
            raise _Malformed("obsolete extended label type")
        pos += 1 + length


def _parse(message: bytes) -> _Parsed | None:
    """Read a query strictly; None for anything to stay silent about.

    Silence for: shorter than a header, QR set (a response: answering it
    could loop us with another server), or any section that does not parse.
    """
    end = len(message)
    if end < 12:
        return None
    ident, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(message)
    if flags & 0x8000:
        return None
    try:
        pos = 12
        starts: list[int] = []
        qtype = qclass = 0
        question = b""
        if qdcount:
            # The first QNAME is read label by label: no pointers (nothing
            # precedes it to point at), 255 octets at most.
            while True:
                if pos >= end:
                    raise _Malformed("question name runs past the end")
                length = message[pos]
                if length == 0:
                    pos += 1
                    break
                if length > 63:
                    raise _Malformed("pointer or bad label in the question name")
                starts.append(pos - 12)
                pos += 1 + length
                if pos - 12 > 254:
                    raise _Malformed("question name longer than 255 octets")
            if pos + 4 > end:
                raise _Malformed("question runs past the end")
            qtype, qclass = _QTAIL.unpack_from(message, pos)
            pos += 4
            question = message[12:pos]
            for _ in range(qdcount - 1):
                pos = _skip_name(message, pos, end) + 4
                if pos > end:
                    raise _Malformed("question runs past the end")
        opt: tuple[int, int, int] | None = None
        opts = 0
        bad_opt = False
        records = ancount + nscount + arcount
        for index in range(records):
            owner = pos
            pos = _skip_name(message, pos, end)
            if pos + 10 > end:
                raise _Malformed("record runs past the end")
            rtype, rclass, ttl, rdlength = _RR_FIXED.unpack_from(message, pos)
            pos += 10 + rdlength
            if pos > end:
                raise _Malformed("record data runs past the end")
            if rtype == TYPE_OPT:
                opts += 1
                in_additional = index >= ancount + nscount
                if opts > 1 or pos - rdlength - 10 != owner + 1 or not in_additional:
                    bad_opt = True
                else:
                    opt = (rclass, ttl >> 16 & 0xFF, ttl & 0x8000)
    except _Malformed:
        return None
    if bad_opt:
        opt = None
    return _Parsed(ident, flags, qdcount, question, tuple(starts), qtype, qclass,
                   opt, bad_opt, pos != end)


class _Verdict(NamedTuple):
    """How to answer, decided before any bytes are built."""

    rcode: int
    label: str | None
    records: tuple[_Segments, _Segments, _Segments]  # answer, authority, additional
    echo: bool  # whether the question section goes back
    authoritative: bool
    zone_at: int  # offset of the zone name in the message (for the pointer)


_NONE = (_EMPTY, _EMPTY, _EMPTY)


def _judge(query: _Parsed, zone: Zone) -> _Verdict:
    """Apply the rules of docs/dns.md, in order, to a parsed query."""
    opcode = query.flags >> 11 & 0xF
    if opcode != 0:
        return _Verdict(NOTIMP, None, _NONE, False, False, 0)
    if query.qdcount != 1 or query.bad_opt or query.trailing:
        return _Verdict(FORMERR, None, _NONE, False, False, 0)
    if query.opt is not None and query.opt[1] != 0:
        return _Verdict(BADVERS, None, _NONE, True, False, 0)
    plan = zone._plan
    question = query.question
    qname_end = len(question) - 4
    zone_start = qname_end - len(plan.wire)
    if query.qclass != CLASS_IN or zone_start < 0:
        return _Verdict(REFUSED, None, _NONE, True, False, 0)
    qname = question[:qname_end].lower()
    starts = query.starts
    depth = len(starts) - plan.labels  # labels below the zone
    # The suffix must match on a label boundary: a label may hold any byte,
    # including ones that look like a length followed by the zone's labels.
    if depth < 0 or starts[depth] != zone_start or qname[zone_start:] != plan.wire:
        return _Verdict(REFUSED, None, _NONE, True, False, 0)
    qtype = query.qtype
    if qtype in (TYPE_AXFR, TYPE_IXFR):
        return _Verdict(REFUSED, None, _NONE, True, False, 0)
    zone_at = 12 + zone_start
    host = plan.hosts.get(qname) if plan.hosts else None
    if host is not None and qtype in (TYPE_A, TYPE_AAAA, TYPE_ANY):
        found = host[0] if qtype == TYPE_A else host[1] if qtype == TYPE_AAAA else host[2]
        if found.records and (depth or qtype != TYPE_ANY):
            return _Verdict(NOERROR, None, (found, _EMPTY, _EMPTY), True, True, zone_at)
    if depth == 0:
        if qtype == TYPE_SOA:
            return _Verdict(NOERROR, None, (plan.soa, _EMPTY, _EMPTY), True, True, zone_at)
        if qtype == TYPE_NS:
            return _Verdict(NOERROR, None, (plan.ns, _EMPTY, plan.glue), True, True, zone_at)
        if qtype == TYPE_ANY:
            # RFC 8482: one small answer, the SOA; ANY with NS and glue made a
            # 39-byte query 578 bytes (an outside review's measurement).
            return _Verdict(NOERROR, None, (plan.soa, _EMPTY, _EMPTY), True, True, zone_at)
    label = None
    if depth == 1 and host is None:
        raw = qname[1:starts[1]]
        if _TOKEN_LABEL.fullmatch(raw):
            label = raw.decode("ascii")
    return _Verdict(NOERROR, label, (_EMPTY, plan.soa, _EMPTY), True, True, zone_at)


def _examine(message: bytes, zone: Zone) -> tuple[_Parsed, _Verdict] | None:
    if type(message) is not bytes:
        message = bytes(message)
    query = _parse(message)
    if query is None:
        return None
    return query, _judge(query, zone)


def _build(query: _Parsed, verdict: _Verdict, limit: int) -> bytes:
    """The wire answer: header, echoed question, records, OPT; TC if too big."""
    rcode = verdict.rcode
    # Keep opcode, RD and CD from the query; set QR, and AA when authoritative.
    flags = 0x8000 | (query.flags & 0x7910) | (rcode & 0xF)
    if verdict.authoritative:
        flags |= 0x0400
    question = query.question if verdict.echo else b""
    opt = b""
    if query.opt is not None:
        extended = (rcode >> 4) << 24 | query.opt[2]  # keep DO (RFC 3225)
        opt = b"\x00" + _RR_FIXED.pack(TYPE_OPT, EDNS_SIZE, extended, 0)
    pointer = _POINTER.pack(0xC000 | verdict.zone_at)
    answer, authority, additional = verdict.records
    body = answer.render(pointer) + authority.render(pointer)
    extra = additional.render(pointer) if additional.records else b""
    counts = (1 if question else 0, answer.records, authority.records)
    size = 12 + len(question) + len(body) + len(opt)
    if size + len(extra) <= limit:
        head = _HEADER.pack(query.ident, flags, *counts, additional.records + (1 if opt else 0))
        return head + question + body + extra + opt
    if size <= limit:
        # Glue in the additional section is optional data (RFC 2181 s9):
        # drop it before truncating what was asked for.
        head = _HEADER.pack(query.ident, flags, *counts, 1 if opt else 0)
        return head + question + body + opt
    head = _HEADER.pack(query.ident, flags | 0x0200, counts[0], 0, 0, 1 if opt else 0)
    return head + question + opt


def answer(message: bytes, zone: Zone, max_size: int = UDP_SIZE, truncate: bool = False) -> Query:
    """Answer one DNS message for ``zone``; never raises on any input.

    ``max_size`` is the most the transport carries: ``UDP_SIZE`` (512) for
    UDP, where an EDNS0 client may raise it up to ``EDNS_SIZE`` (1232), and
    ``TCP_SIZE`` for TCP. A larger answer drops optional glue, then sets TC
    and keeps only the question (the client retries over TCP).
    """
    examined = _examine(message, zone)
    if examined is None:
        return Query(None, None)
    query, verdict = examined
    if truncate:
        # Response rate limiting's "slip": only the header and the question,
        # with TC set, so a real resolver retries over TCP (RFC 7766).
        return Query(verdict.label, _build(query, verdict, 0))
    limit = max_size
    if query.opt is not None:
        # RFC 6891: sizes below 512 mean 512; our ceiling avoids fragments.
        limit = max(limit, min(max(query.opt[0], UDP_SIZE), EDNS_SIZE))
    return Query(verdict.label, _build(query, verdict, limit))


def sniff(message: bytes, zone: Zone) -> str | None:
    """The token label of a query another server will answer (sniff mode).

    Exactly the label :func:`answer` would report for the same bytes; no
    reply is built, because the server that owns port 53 sends it.
    """
    examined = _examine(message, zone)
    return None if examined is None else examined[1].label


def knock(label: str, source: IPAddress, received: float) -> Knock | None:
    """Classify a token label: an OTP code, a compact or extended token, or None.

    OTP labels always hold a hyphen and base32 never does, so the forms
    cannot be confused. Nothing is verified here: that is the gate's job.
    """
    label = label.lower()
    if "-" in label:
        code = otp.parse_label(label)
        if code is None:
            return None
        return Knock(Carrier.DNS, Form.OTP, code, source, received)
    data = encoding.from_label(label)
    if data is None:
        return None
    if len(data) == compact.SIZE:
        return Knock(Carrier.DNS, Form.COMPACT, data, source, received)
    if len(data) in compact.EXTENDED_SIZES:
        return Knock(Carrier.DNS, Form.EXTENDED, data, source, received)
    return None


def read_tcp(buffer: bytearray) -> list[bytes]:
    """Take every complete length-framed message out of ``buffer`` (RFC 1035 4.2.2).

    A partial message stays in the buffer for the next read. A zero-length
    frame comes back as ``b""`` (``answer`` stays silent about it).
    """
    messages: list[bytes] = []
    pos = 0
    available = len(buffer)
    while available - pos >= 2:
        length = buffer[pos] << 8 | buffer[pos + 1]
        if available - pos - 2 < length:
            break
        messages.append(bytes(buffer[pos + 2:pos + 2 + length]))
        pos += 2 + length
    if pos:
        del buffer[:pos]
    return messages


def frame_tcp(message: bytes) -> bytes:
    """Prefix a message with its 2-byte length for DNS over TCP."""
    if len(message) > TCP_SIZE:
        raise ValueError(f"a DNS message over TCP is at most {TCP_SIZE} bytes, not {len(message)}")
    return _POINTER.pack(len(message)) + message
