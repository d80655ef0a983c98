"""The DNS carrier: answers, label extraction, classification and TCP framing.

Queries are built with dnslib and answers read back with it, so the wire
code in spa/carriers/dns.py is checked against an independent DNS codec;
malformed cases are written as raw bytes. The last tests run the real
``dig`` against a loopback server made of ``answer``.
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from dnslib import CLASS, EDNS0, OPCODE, QTYPE, RCODE, DNSHeader, DNSQuestion, DNSRecord, EDNSOption
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from makings import CLIENT, CLIENT6, NOW, Bench

from spa.carriers import dns
from spa.core import encoding, otp
from spa.core.events import Carrier, Form, OtpCode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import dns_answer  # noqa: E402
from world.need import need  # noqa: E402

NS_V4 = ipaddress.ip_address("192.0.2.53")
NS_V6 = ipaddress.ip_address("2001:db8::53")
ZONE = dns.Zone.build("knock.example.com", addresses=(NS_V4, NS_V6))
SOURCE = ipaddress.ip_address("203.0.113.1")


def query(name: str, qtype: str = "A", *, edns: EDNS0 | None = None, ident: int = 4321,
          rd: bool = True, qclass: str = "IN") -> bytes:
    """A query as a stub or resolver would send it."""
    record = DNSRecord(DNSHeader(id=ident, rd=int(rd)), q=DNSQuestion(name, getattr(QTYPE, qtype),
                                                                      getattr(CLASS, qclass)))
    if edns is not None:
        record.add_ar(edns)
    return record.pack()


def reply(message: bytes, max_size: int = dns.UDP_SIZE) -> DNSRecord:
    result = dns.answer(message, ZONE, max_size)
    assert result.response is not None
    return DNSRecord.parse(result.response)


def raw_query(qname: bytes, qtype: int = 1, *, flags: int = 0x0100, counts: tuple[int, int, int, int] = (1, 0, 0, 0),
              tail: bytes = b"") -> bytes:
    return struct.pack(">6H", 0x1234, flags, *counts) + qname + struct.pack(">HH", qtype, 1) + tail


def wire(name: str) -> bytes:
    return b"".join(bytes([len(part)]) + part.encode() for part in name.split(".")) + b"\x00"


def question_length(message: bytes) -> int:
    """Bytes of the question section of a one-question message."""
    end = 12
    while message[end]:
        end += 1 + message[end]
    return end + 5 - 12


def soa_of(record: DNSRecord) -> tuple[object, ...]:
    (soa,) = [rr for rr in record.auth + record.rr if rr.rtype == QTYPE.SOA]
    data = soa.rdata
    return (str(soa.rname).lower(), soa.ttl, str(data.mname).lower(), str(data.rname).lower(), *data.times)


# --- the zone ---------------------------------------------------------------------------


def test_zone_defaults_and_normalisation() -> None:
    zone = dns.Zone.build("Knock.Example.COM.")
    assert zone.name == "knock.example.com"
    assert zone.nameservers == ("ns1.knock.example.com",)
    assert zone.addresses == () and zone.ttl == 1 and zone.serial == 1
    assert zone.contact == "hostmaster.knock.example.com"
    assert dns.Zone.build("knock.example.com") == zone
    other = dns.Zone("knock.example.com", ("a.ns.example.net", "A.NS.example.net"), (), 0,
                     "admin@example.org", 7)
    assert other.nameservers == ("a.ns.example.net",) and other.contact == "admin.example.org"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": ""}, "empty"),
        ({"name": "."}, "empty"),
        ({"name": "a..example.com"}, "label ''"),
        ({"name": "-a.example.com"}, "label '-a'"),
        ({"name": "a_b.example.com"}, "label 'a_b'"),
        ({"name": "x" * 64 + ".example.com"}, "1-63"),
        ({"name": ".".join(["abcdefghi"] * 20)}, "189"),
        ({"name": "knock.example.com", "ttl": 6}, "ttl"),
        ({"name": "knock.example.com", "ttl": -1}, "ttl"),
        ({"name": "knock.example.com", "nameservers": ("ns..example.net",)}, "name server"),
        ({"name": "knock.example.com", "nameservers": ("ns.example.net",), "addresses": (NS_V4,)}, "glue"),
        ({"name": "knock.example.com", "addresses": ("192.0.2.1",)}, "IPv4Address"),
    ],
)
def test_zone_refuses_bad_input_with_a_clear_message(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dns.Zone.build(**kwargs)  # type: ignore[arg-type]


def test_zone_refuses_bad_contact_and_serial() -> None:
    with pytest.raises(ValueError, match="before @"):
        dns.Zone("knock.example.com", (), (), contact="first.last@example.com")
    with pytest.raises(ValueError, match="serial"):
        dns.Zone("knock.example.com", (), (), serial=0)


# --- the apex and the name servers ------------------------------------------------------


def test_apex_soa() -> None:
    record = reply(query("knock.example.com", "SOA"))
    assert record.header.rcode == RCODE.NOERROR and record.header.aa and record.header.qr
    assert len(record.rr) == 1 and not record.auth and not record.ar
    assert soa_of(record) == ("knock.example.com.", 1, "ns1.knock.example.com.",
                              "hostmaster.knock.example.com.", 1, 3600, 600, 86400, 1)


def test_soa_carries_the_zone_ttl_as_ttl_and_minimum() -> None:
    zone = dns.Zone("knock.example.com", (), (), ttl=0, serial=2025)
    record = DNSRecord.parse(dns.answer(query("knock.example.com", "SOA"), zone).response or b"")
    assert soa_of(record)[1] == 0 and soa_of(record)[4:] == (2025, 3600, 600, 86400, 0)


def test_apex_ns_with_glue() -> None:
    record = reply(query("knock.example.com", "NS"))
    assert record.header.rcode == RCODE.NOERROR and record.header.aa
    assert [(rr.rtype, str(rr.rdata), rr.ttl) for rr in record.rr] == [(QTYPE.NS, "ns1.knock.example.com.", 1)]
    assert sorted((str(rr.rname), QTYPE[rr.rtype], str(rr.rdata)) for rr in record.ar) == [
        ("ns1.knock.example.com.", "A", "192.0.2.53"),
        ("ns1.knock.example.com.", "AAAA", "2001:db8::53"),
    ]


def test_name_servers_outside_the_zone_get_no_glue() -> None:
    zone = dns.Zone.build("knock.example.com", ("ns1.example.net", "ns2.example.net"))
    record = DNSRecord.parse(dns.answer(query("knock.example.com", "NS"), zone).response or b"")
    assert [str(rr.rdata) for rr in record.rr] == ["ns1.example.net.", "ns2.example.net."]
    assert not record.ar
    assert str(record.rr[0].rname) == "knock.example.com."
    assert soa_of(reply(query("knock.example.com", "SOA")))[2] == "ns1.knock.example.com."
    soa = DNSRecord.parse(dns.answer(query("knock.example.com", "SOA"), zone).response or b"")
    assert soa_of(soa)[2] == "ns1.example.net."


def test_apex_any_is_the_soa_alone() -> None:
    """RFC 8482. With NS and glue an outside review made 39 bytes into 578."""
    question = query("knock.example.com", "ANY")
    answer = dns.answer(question, ZONE).response
    assert answer is not None
    record = DNSRecord.parse(answer)
    assert [QTYPE[rr.rtype] for rr in record.rr] == ["SOA"] and not record.ar and not record.auth
    assert len(answer) <= 3 * len(question), (len(question), len(answer))


def test_a_rate_limited_answer_is_truncated_and_still_names_the_label() -> None:
    question = query("aaaaaaaaaaaaaaaaaaaaaaaaaa.knock.example.com", "A")
    slipped = dns.answer(question, ZONE, truncate=True)
    assert slipped.label == "aaaaaaaaaaaaaaaaaaaaaaaaaa" and slipped.response is not None
    record = DNSRecord.parse(slipped.response)
    assert record.header.tc and not record.rr and not record.auth and len(slipped.response) <= len(question) + 12


@pytest.mark.parametrize("qtype", ["A", "AAAA", "TXT", "MX", "DS", "DNSKEY", "CAA"])
def test_apex_other_types_are_nodata_with_soa(qtype: str) -> None:
    record = reply(query("knock.example.com", qtype))
    assert record.header.rcode == RCODE.NOERROR and record.header.aa
    assert not record.rr and len(record.auth) == 1 and soa_of(record)[1] == 1


def test_in_zone_name_server_answers_its_addresses() -> None:
    four = reply(query("ns1.knock.example.com", "A"))
    six = reply(query("NS1.knock.example.com", "AAAA"))
    assert [str(rr.rdata) for rr in four.rr] == ["192.0.2.53"] and four.header.aa
    assert [str(rr.rdata) for rr in six.rr] == ["2001:db8::53"]
    assert [QTYPE[rr.rtype] for rr in reply(query("ns1.knock.example.com", "ANY")).rr] == ["A", "AAAA"]
    txt = reply(query("ns1.knock.example.com", "TXT"))
    assert not txt.rr and len(txt.auth) == 1
    assert dns.answer(query("ns1.knock.example.com"), ZONE).label is None


def test_name_server_without_addresses_of_a_family_is_nodata() -> None:
    zone = dns.Zone.build("knock.example.com", addresses=(NS_V4,))
    record = DNSRecord.parse(dns.answer(query("ns1.knock.example.com", "AAAA"), zone).response or b"")
    assert record.header.rcode == RCODE.NOERROR and not record.rr and len(record.auth) == 1


def test_zone_apex_as_its_own_name_server() -> None:
    zone = dns.Zone.build("knock.example.com", ("knock.example.com",), (NS_V4,))
    apex_a = DNSRecord.parse(dns.answer(query("knock.example.com", "A"), zone).response or b"")
    assert [str(rr.rdata) for rr in apex_a.rr] == ["192.0.2.53"]
    ns = DNSRecord.parse(dns.answer(query("knock.example.com", "NS"), zone).response or b"")
    assert [str(rr.rname) for rr in ns.ar] == ["knock.example.com."]


# --- names below the zone ---------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "mfrggzdfmztwq2lknnwg23tpoa.knock.example.com",  # a (junk) compact-length label
    "alice-492039.knock.example.com",
    "x.knock.example.com",
    "b.knock.example.com",  # what QNAME minimisation asks first for a.b.knock...
    "a.b.knock.example.com",
    "_dmarc.knock.example.com",
    "www.ns1.knock.example.com",
])
@pytest.mark.parametrize("qtype", ["A", "AAAA", "TXT", "ANY", "MX", "NS", "SOA"])
def test_every_name_below_the_zone_is_nodata_with_soa(name: str, qtype: str) -> None:
    record = reply(query(name, qtype))
    assert record.header.rcode == RCODE.NOERROR and record.header.aa and not record.header.tc
    assert not record.rr and not record.ar and len(record.auth) == 1
    assert soa_of(record)[:2] == ("knock.example.com.", 1)


def test_label_is_the_one_label_under_the_zone_lowercased() -> None:
    assert dns.answer(query("MfRgGzDfMzTwQ2lKnNwG23tPoA.knock.example.com"), ZONE).label == \
        "mfrggzdfmztwq2lknnwg23tpoa"
    assert dns.answer(query("Alice-492039-198-51-100-7.Knock.Example.Com"), ZONE).label == \
        "alice-492039-198-51-100-7"
    for name in ("knock.example.com", "a.b.knock.example.com", "ns1.knock.example.com", "example.com",
                 "*.knock.example.com", "a\\.b.knock.example.com"):
        assert dns.answer(query(name), ZONE).label is None, name


def test_answers_are_identical_for_valid_and_invalid_tokens(bench: Bench) -> None:
    """Apart from the echoed question and the ID, nothing tells a valid token from junk."""
    pairs = [
        (bench.compact(), os.urandom(16)),
        (bench.extended(CLIENT), os.urandom(20)),
        (bench.extended(CLIENT6), os.urandom(32)),
    ]
    for valid, junk in pairs:
        for edns in (None, EDNS0(udp_len=1232)):
            answers = []
            for token in (valid, junk, b"\xff" * len(valid)):
                message = query(encoding.to_label(token) + ".knock.example.com", edns=edns)
                result = dns.answer(message, ZONE)
                assert result.label == encoding.to_label(token)
                response = result.response or b""
                skip = 12 + question_length(message)
                assert response[skip - question_length(message):skip] == message[12:skip]
                answers.append((response[2:12], response[skip:]))
            assert answers[0] == answers[1] == answers[2]
    otp_answers = set()
    for label in ("alice-492039", "zelda-000000", "alice-49203x"):  # same length: same pointer
        message = query(label + ".knock.example.com")
        otp_answers.add((dns.answer(message, ZONE).response or b"")[12 + question_length(message):])
    assert len(otp_answers) == 1


# --- refusals, errors and silence -------------------------------------------------------


@pytest.mark.parametrize("name", ["example.com", "other.org", "xknock.example.com", "knock.example.co",
                                  "com", "knock.example.com.evil.net"])
def test_names_outside_the_zone_are_refused(name: str) -> None:
    result = dns.answer(query(name), ZONE)
    record = DNSRecord.parse(result.response or b"")
    assert result.label is None
    assert record.header.rcode == RCODE.REFUSED and not record.header.aa
    assert str(record.q.qname).lower() == name.lower() + "." and not record.rr and not record.auth


def test_root_name_is_refused() -> None:
    record = reply(raw_query(b"\x00"))
    assert record.header.rcode == RCODE.REFUSED


def test_zone_suffix_must_sit_on_a_label_boundary() -> None:
    """A label may contain any byte, including ones that spell '\\x05knock' inside it."""
    qname = b"\x08ab\x05knock" + wire("example.com")
    record = reply(raw_query(qname))
    assert record.header.rcode == RCODE.REFUSED


@pytest.mark.parametrize("qtype", ["AXFR", "IXFR"])
def test_zone_transfers_are_refused(qtype: str) -> None:
    assert reply(query("knock.example.com", qtype), dns.TCP_SIZE).header.rcode == RCODE.REFUSED


def test_other_classes_are_refused() -> None:
    result = dns.answer(query("version.bind", "TXT", qclass="CH"), ZONE)
    assert DNSRecord.parse(result.response or b"").header.rcode == RCODE.REFUSED
    result = dns.answer(query("x.knock.example.com", "TXT", qclass="CH"), ZONE)
    assert DNSRecord.parse(result.response or b"").header.rcode == RCODE.REFUSED and result.label is None


@pytest.mark.parametrize("opcode", [OPCODE.IQUERY, OPCODE.STATUS, OPCODE.NOTIFY, OPCODE.UPDATE, 3, 15])
def test_other_opcodes_are_not_implemented(opcode: int) -> None:
    record = DNSRecord(DNSHeader(id=77, opcode=opcode), q=DNSQuestion("knock.example.com", QTYPE.SOA))
    result = dns.answer(record.pack(), ZONE)
    response = DNSRecord.parse(result.response or b"")
    assert result.label is None
    assert response.header.rcode == RCODE.NOTIMP and response.header.opcode == opcode
    assert response.header.id == 77 and not response.header.aa and not response.questions


@pytest.mark.parametrize("qdcount", [0, 2])
def test_question_count_other_than_one_is_formerr(qdcount: int) -> None:
    question = wire("x.knock.example.com") + b"\x00\x01\x00\x01"
    message = struct.pack(">6H", 9, 0x0100, qdcount, 0, 0, 0) + question * qdcount
    result = dns.answer(message, ZONE)
    record = DNSRecord.parse(result.response or b"")
    assert record.header.rcode == RCODE.FORMERR and record.header.id == 9 and not record.questions
    assert result.label is None


def test_trailing_bytes_are_formerr() -> None:
    record = reply(query("x.knock.example.com") + b"\x00")
    assert record.header.rcode == RCODE.FORMERR


def test_two_opt_records_are_formerr_without_opt() -> None:
    opt = b"\x00" + struct.pack(">HHIH", 41, 1232, 0, 0)
    message = raw_query(wire("x.knock.example.com"), counts=(1, 0, 0, 2), tail=opt + opt)
    record = reply(message)
    assert record.header.rcode == RCODE.FORMERR and not record.ar


def test_opt_not_owned_by_the_root_is_formerr() -> None:
    opt = wire("x") + struct.pack(">HHIH", 41, 1232, 0, 0)
    assert reply(raw_query(wire("x.knock.example.com"), counts=(1, 0, 0, 1), tail=opt)).header.rcode == \
        RCODE.FORMERR


def test_responses_are_never_answered() -> None:
    response = dns.answer(query("x.knock.example.com"), ZONE).response or b""
    assert dns.answer(response, ZONE) == dns.Query(None, None)
    assert dns.sniff(response, ZONE) is None
    spoofed = bytearray(query("x.knock.example.com"))
    spoofed[2] |= 0x80
    assert dns.answer(bytes(spoofed), ZONE) == dns.Query(None, None)


@pytest.mark.parametrize("message", [
    b"",
    b"\x00",
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00",  # 11 bytes
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00",  # header only, question missing
    raw_query(wire("x.knock.example.com"))[:-1],  # question cut short
    raw_query(b"\x05knock\xc0\x0c"),  # pointer in the question name
    raw_query(b"\xc0\x0c"),  # pointer to itself
    raw_query(b"\x40" + b"a" * 64 + wire("knock.example.com")),  # 64-byte label (0x40 label type)
    raw_query(b"\xff" + b"a" * 255 + wire("knock.example.com")),
    raw_query(b"\x3f" + b"a" * 63 + b"\x3f" + b"b" * 63 + b"\x3f" + b"c" * 63 + b"\x3f" + b"d" * 63
              + wire("knock.example.com")),  # name longer than 255 octets
    raw_query(wire("x.knock.example.com"), counts=(1, 0, 0, 1), tail=b"\xc0\x2a" + bytes(10)),  # forward pointer
    raw_query(wire("x.knock.example.com"), counts=(1, 0, 0, 1), tail=b"\x00\x00\x29\x04"),  # OPT cut short
    raw_query(wire("x.knock.example.com"), counts=(1, 0, 0, 1),
              tail=b"\x00" + struct.pack(">HHIH", 41, 1232, 0, 10)),  # rdata past the end
    raw_query(wire("x.knock.example.com"), counts=(1, 65535, 65535, 65535)),
    raw_query(wire("x.knock.example.com"), counts=(65535, 0, 0, 0)),
])
def test_unparsable_messages_get_silence(message: bytes) -> None:
    assert dns.answer(message, ZONE) == dns.Query(None, None)
    assert dns.sniff(message, ZONE) is None


def test_compression_loop_in_a_record_we_skip_never_hangs() -> None:
    # An additional record whose owner is a label followed by a pointer back to
    # that label: a loop for anyone who follows it. We never follow it.
    qname = wire("x.knock.example.com")
    loop_at = 12 + len(qname) + 4
    tail = b"\x01a" + struct.pack(">H", 0xC000 | loop_at) + struct.pack(">HHIH", 1, 1, 0, 0)
    result = dns.answer(raw_query(qname, counts=(1, 0, 0, 1), tail=tail), ZONE)
    assert result.response is not None and result.label == "x"


def test_longest_names_are_answered_and_fit_512_bytes() -> None:
    zone = dns.Zone.build("z" * 63 + "." + "y" * 63 + "." + "x" * 61)
    label = "a" * 63
    name = f"{label}.{zone.name}"
    assert len(name) == 253
    result = dns.answer(query(name, edns=EDNS0(udp_len=512)), zone)
    record = DNSRecord.parse(result.response or b"")
    assert result.label == label and record.header.rcode == RCODE.NOERROR and not record.header.tc
    assert len(record.auth) == 1 and len(result.response or b"") <= 512


# --- header bits ------------------------------------------------------------------------


def test_id_rd_and_cd_are_copied_and_aa_set() -> None:
    for rd in (False, True):
        record = reply(query("x.knock.example.com", ident=0xBEEF, rd=rd))
        assert record.header.id == 0xBEEF and record.header.rd == int(rd)
        assert record.header.aa and record.header.qr and not record.header.ra
    message = bytearray(query("x.knock.example.com"))
    message[3] |= 0x10  # CD
    message[3] |= 0x40  # the reserved Z bit, which we must not echo
    response = dns.answer(bytes(message), ZONE).response or b""
    assert response[3] & 0x10 and not response[3] & 0x40


def test_question_is_echoed_byte_for_byte_with_0x20_case() -> None:
    rng = random.Random(20)
    for _ in range(50):
        name = "".join(c.upper() if rng.random() < 0.5 else c for c in "aebagbafaydqcakrgeyhbzbfkm.knock.example.com")
        message = query(name)
        result = dns.answer(message, ZONE)
        length = question_length(message)
        assert (result.response or b"")[12:12 + length] == message[12:12 + length]
        assert result.label == "aebagbafaydqcakrgeyhbzbfkm"


def test_bytearray_and_memoryview_are_accepted() -> None:
    message = query("x.knock.example.com")
    expected = dns.answer(message, ZONE)
    assert dns.answer(bytearray(message), ZONE) == expected
    assert dns.answer(memoryview(message), ZONE) == expected
    assert dns.sniff(bytearray(message), ZONE) == "x"


# --- EDNS0 and sizes --------------------------------------------------------------------


def test_opt_is_echoed_only_when_the_query_had_one() -> None:
    assert not reply(query("x.knock.example.com")).ar
    record = reply(query("x.knock.example.com", edns=EDNS0(udp_len=4096)))
    (opt,) = record.ar
    assert opt.rtype == QTYPE.OPT and opt.rclass == dns.EDNS_SIZE and opt.ttl == 0
    with_do = reply(query("x.knock.example.com", edns=EDNS0(udp_len=1232, flags="do")))
    assert with_do.ar[0].ttl == 0x8000
    cookie = EDNSOption(10, os.urandom(8))  # a client cookie (RFC 7873): we do not do cookies
    with_cookie = reply(query("x.knock.example.com", edns=EDNS0(udp_len=1232, opts=[cookie])))
    assert with_cookie.ar[0].rdata == []  # options are not echoed


def test_unknown_edns_version_is_badvers() -> None:
    result = dns.answer(query("x.knock.example.com", edns=EDNS0(version=1, udp_len=1232)), ZONE)
    record = DNSRecord.parse(result.response or b"")
    (opt,) = record.ar
    assert result.label is None and record.header.rcode == 0 and opt.ttl >> 24 == 1  # 16 = BADVERS
    assert opt.ttl >> 16 & 0xFF == 0 and record.questions and not record.auth


def big_zone(count: int = 12) -> dns.Zone:
    servers = tuple(f"{'n' * 40}{i}.knock.example.com" for i in range(count))
    addresses = tuple(ipaddress.ip_address(f"2001:db8::{i + 1}") for i in range(6))
    return dns.Zone.build("knock.example.com", servers, addresses)


def test_glue_is_dropped_before_truncating() -> None:
    zone = big_zone(8)  # 8 NS records fit 512 bytes, their 48 glue records do not
    full = dns.answer(query("knock.example.com", "NS"), zone, dns.TCP_SIZE).response or b""
    assert len(full) > 512
    result = dns.answer(query("knock.example.com", "NS"), zone)
    record = DNSRecord.parse(result.response or b"")
    assert not record.header.tc and len(record.rr) == 8 and not record.ar
    assert len(result.response or b"") <= 512


def test_truncation_sets_tc_and_keeps_only_question_and_opt() -> None:
    zone = big_zone(12)
    udp = DNSRecord.parse(dns.answer(query("knock.example.com", "NS"), zone).response or b"")
    assert udp.header.tc and udp.questions and not udp.rr and not udp.auth and not udp.ar
    assert udp.header.aa and udp.header.rcode == RCODE.NOERROR
    small_edns = dns.answer(query("knock.example.com", "NS", edns=EDNS0(udp_len=100)), zone).response or b""
    assert DNSRecord.parse(small_edns).header.tc and len(small_edns) <= 512  # below 512 counts as 512
    edns = dns.answer(query("knock.example.com", "NS", edns=EDNS0(udp_len=4096)), zone).response or b""
    record = DNSRecord.parse(edns)
    assert not record.header.tc and len(record.rr) == 12 and len(edns) <= dns.EDNS_SIZE
    assert record.ar[-1].rtype == QTYPE.OPT
    tcp = DNSRecord.parse(dns.answer(query("knock.example.com", "NS"), zone, dns.TCP_SIZE).response or b"")
    assert not tcp.header.tc and len(tcp.rr) == 12 and len(tcp.ar) == 72


# --- sniff --------------------------------------------------------------------------------


def test_sniff_reports_exactly_what_answer_reports() -> None:
    messages = [
        query("Abc.knock.example.com"),
        query("alice-123456.knock.example.com", "AAAA", edns=EDNS0()),
        query("a.b.knock.example.com"),
        query("knock.example.com", "SOA"),
        query("example.com"),
        query("x.knock.example.com", edns=EDNS0(version=1)),
        b"junk",
    ]
    for message in messages:
        assert dns.sniff(message, ZONE) == dns.answer(message, ZONE).label
    assert dns.sniff(messages[0], ZONE) == "abc"


# --- knock(): classifying labels --------------------------------------------------------


def test_compact_label_is_a_compact_knock(bench: Bench) -> None:
    token = bench.compact()
    label = encoding.to_label(token)
    knock = dns.knock(label, SOURCE, NOW + 0.25)
    assert knock is not None
    assert (knock.carrier, knock.form, knock.payload, knock.source, knock.received) == \
        (Carrier.DNS, Form.COMPACT, token, SOURCE, NOW + 0.25)
    assert dns.knock(label.upper(), SOURCE, NOW) == dns.knock(label, SOURCE, NOW)
    assert bench.gate.decide(knock).__class__.__name__ == "Rejection"  # bound to CLIENT, came from SOURCE
    assert bench.gate.decide(dns.knock(label, CLIENT, NOW)).__class__.__name__ == "Accepted"  # type: ignore[arg-type]


@pytest.mark.parametrize(("address", "size"), [(CLIENT, 20), (CLIENT6, 32)])
def test_extended_labels_are_extended_knocks(bench: Bench, address: ipaddress.IPv4Address, size: int) -> None:
    token = bench.extended(address)
    assert len(token) == size
    knock = dns.knock(encoding.to_label(token), SOURCE, NOW)
    assert knock is not None and knock.form == Form.EXTENDED and knock.payload == token
    assert bench.gate.decide(knock).__class__.__name__ == "Accepted"


@pytest.mark.parametrize(("label", "code"), [
    ("alice-492039", OtpCode("alice", "492039")),
    ("ALICE-12345678", OtpCode("alice", "12345678")),
    ("alice-0123456789", OtpCode("alice", "0123456789")),
    ("alice-492039-198-51-100-7", OtpCode("alice", "492039", CLIENT)),
    ("alice-492039-2001-db8--7", OtpCode("alice", "492039", CLIENT6)),
])
def test_otp_labels_are_otp_knocks(label: str, code: OtpCode) -> None:
    knock = dns.knock(label, SOURCE, NOW)
    assert knock is not None and knock.form == Form.OTP and knock.payload == code
    assert knock.carrier == Carrier.DNS and knock.source == SOURCE
    assert otp.to_label(code.who, code.digits, code.address) == label.lower()  # type: ignore[arg-type]


@pytest.mark.parametrize("label", [
    "", "a", "ns1", "www", "abc", "x" * 63,
    "0" * 26,  # 26 characters, not base32
    encoding.to_label(bytes(15)), encoding.to_label(bytes(17)), encoding.to_label(bytes(24)),
    encoding.to_label(bytes(39)),
    "alice-49203", "alice-492039-300-1-1-1", "1alice-492039", "alice-", "-492039", "alice-492039-zz",
    "_dmarc",
])
def test_junk_labels_are_no_knock(label: str) -> None:
    assert dns.knock(label, SOURCE, NOW) is None


# --- TCP framing --------------------------------------------------------------------------


def test_tcp_framing_survives_reads_split_anywhere() -> None:
    messages = [query("a.knock.example.com"), b"", query("b.knock.example.com", edns=EDNS0()), b"x" * 300]
    stream = b"".join(dns.frame_tcp(m) for m in messages)
    for chunk in (1, 2, 3, 7, 64, len(stream)):
        buffer = bytearray()
        seen: list[bytes] = []
        for start in range(0, len(stream), chunk):
            buffer += stream[start:start + chunk]
            seen += dns.read_tcp(buffer)
        assert seen == messages and buffer == bytearray()


def test_read_tcp_leaves_partial_messages_in_the_buffer() -> None:
    buffer = bytearray(dns.frame_tcp(b"abc") + b"\x00\x05ab")
    assert dns.read_tcp(buffer) == [b"abc"]
    assert buffer == bytearray(b"\x00\x05ab")
    assert dns.read_tcp(buffer) == [] and buffer == bytearray(b"\x00\x05ab")
    buffer += b"cde\x00"
    assert dns.read_tcp(buffer) == [b"abcde"] and buffer == bytearray(b"\x00")


@given(st.binary(max_size=400))
def test_read_tcp_takes_whole_frames_of_any_stream_and_keeps_the_rest(stream: bytes) -> None:
    buffer = bytearray(stream)
    taken = dns.read_tcp(buffer)
    assert b"".join(dns.frame_tcp(m) for m in taken) + bytes(buffer) == stream
    assert dns.read_tcp(buffer) == []  # what stays is never a whole frame


_any_label = st.one_of(
    st.text(max_size=70),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz234567-019_", max_size=63),
    st.sampled_from([26, 32, 52]).flatmap(lambda n: st.text(alphabet="abcdefghijklmnopqrstuvwxyz234567", min_size=n,
                                                            max_size=n)),
)


@settings(max_examples=800)
@given(_any_label)
def test_knock_classifies_any_label_or_gives_none(label: str) -> None:
    knock = dns.knock(label, SOURCE, NOW)
    if knock is None:
        return
    assert knock.carrier == Carrier.DNS and knock.form in (Form.COMPACT, Form.EXTENDED, Form.OTP)
    if knock.form == Form.OTP:
        assert isinstance(knock.payload, OtpCode)
    else:
        assert isinstance(knock.payload, bytes) and len(knock.payload) in (16, 20, 32)


def test_frame_tcp() -> None:
    assert dns.frame_tcp(b"hello") == b"\x00\x05hello"
    assert len(dns.frame_tcp(bytes(65535))) == 65537
    with pytest.raises(ValueError):
        dns.frame_tcp(bytes(65536))


# --- never raise --------------------------------------------------------------------------


def readable(response: bytes) -> bytes:
    """The response with non-ASCII bytes in its echoed labels replaced, for dnslib.

    Labels may hold any byte and we echo them as received; dnslib refuses to
    decode labels that are not UTF-8, so the test swaps them (same lengths,
    so every offset and pointer stays put).
    """
    data = bytearray(response)
    if struct.unpack(">H", response[4:6])[0]:
        at = 12
        while data[at]:
            for i in range(at + 1, at + 1 + data[at]):
                if data[i] >= 0x80:
                    data[i] = ord("a")
            at += 1 + data[at]
    return bytes(data)


def check_response(message: bytes, result: dns.Query) -> None:
    """Whatever we send is DNS another codec can read, and matches the query."""
    assert dns.sniff(message, ZONE) == result.label
    if result.response is None:
        assert result.label is None
        return
    assert len(result.response) <= dns.EDNS_SIZE
    record = DNSRecord.parse(readable(result.response))
    assert record.header.qr and record.header.id == struct.unpack(">H", message[:2])[0]
    if result.label is not None:
        assert record.header.rcode == RCODE.NOERROR and len(record.auth) == 1 and not record.rr


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_raise(message: bytes) -> None:
    check_response(message, dns.answer(message, ZONE))


def header_like() -> st.SearchStrategy[bytes]:
    """Random bytes behind a plausible header, so the section readers get exercised."""
    return st.builds(
        lambda ident, flags, counts, body: struct.pack(">6H", ident, flags, *counts) + body,
        st.integers(0, 0xFFFF), st.sampled_from([0, 0x0100, 0x0110, 0x2000, 0x8000]),
        st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)),
        st.binary(max_size=300),
    )


@settings(max_examples=1000)
@given(header_like())
def test_random_sections_never_raise(message: bytes) -> None:
    check_response(message, dns.answer(message, ZONE))


labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-", min_size=1,
                 max_size=63)
seeds = st.tuples(
    labels, st.sampled_from(["A", "AAAA", "TXT", "SOA", "NS", "ANY", "MX"]),
    st.sampled_from([None, 512, 1232, 4096]), st.sampled_from(["knock.example.com", "ns1.knock.example.com",
                                                               "example.com", "KNOCK.example.COM"]),
)


def build_seed(seed: tuple[str, str, int | None, str]) -> bytes:
    label, qtype, size, zone = seed
    return query(f"{label}.{zone}", qtype, edns=None if size is None else EDNS0(udp_len=size))


@settings(max_examples=600)
@given(seeds)
def test_well_formed_queries_follow_the_rules(seed: tuple[str, str, int | None, str]) -> None:
    message = build_seed(seed)
    result = dns.answer(message, ZONE)
    check_response(message, result)
    record = DNSRecord.parse(result.response or b"")
    label, qtype, size, zone = seed
    in_zone = zone.lower() == "knock.example.com"
    assert record.header.rcode == (RCODE.NOERROR if zone.lower().endswith("knock.example.com") else RCODE.REFUSED)
    assert result.label == (label.lower() if in_zone else None)
    assert (result.response or b"")[12:12 + question_length(message)] == message[12:12 + question_length(message)]
    assert (bool(record.ar) and record.ar[-1].rtype == QTYPE.OPT) == (size is not None)


mutations = st.lists(
    st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "cut"]), st.integers(0, 400), st.integers(0, 255)),
    min_size=1, max_size=4,
)


def mutate(message: bytes, steps: list[tuple[str, int, int]]) -> bytes:
    data = bytearray(message)
    for action, where, value in steps:
        if not data:
            break
        at = where % len(data)
        if action == "flip":
            data[at] ^= 1 << (value % 8)
        elif action == "set":
            data[at] = value
        elif action == "insert":
            data.insert(at, value)
        elif action == "delete":
            del data[at]
        else:
            del data[at:]
    return bytes(data)


@settings(max_examples=1500)
@given(seeds, mutations)
def test_mutated_queries_never_raise(seed: tuple[str, str, int | None, str], steps: list[tuple[str, int, int]]) -> None:
    message = mutate(build_seed(seed), steps)
    check_response(message, dns.answer(message, ZONE))


# --- the benchmark script runs ------------------------------------------------------------


@pytest.mark.bench
def test_answer_benchmark_runs() -> None:
    results = dns_answer.measure(seconds=0.02)
    assert all(value > 0 for name, value in results.items() if name.endswith("_per_s"))


# --- the real dig against a loopback server -----------------------------------------------


class LoopbackServer:
    """``answer`` behind a UDP and a TCP socket on one ephemeral loopback port."""

    def __init__(self, zone: dns.Zone) -> None:
        self.zone = zone
        self.stop = threading.Event()
        for _ in range(20):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                udp.close()
                tcp.close()
                continue
            break
        else:
            raise RuntimeError("no free loopback port for both UDP and TCP")
        tcp.listen(4)
        udp.settimeout(0.1)
        tcp.settimeout(0.1)
        self.udp, self.tcp, self.port = udp, tcp, port
        self.labels: list[str] = []
        self.threads = [threading.Thread(target=self.serve_udp, daemon=True),
                        threading.Thread(target=self.serve_tcp, daemon=True)]
        for thread in self.threads:
            thread.start()

    def serve_udp(self) -> None:
        while not self.stop.is_set():
            try:
                message, peer = self.udp.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            result = dns.answer(message, self.zone)
            if result.label:
                self.labels.append(result.label)
            if result.response is not None:
                self.udp.sendto(result.response, peer)

    def serve_tcp(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.tcp.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                buffer = bytearray()
                try:
                    while not self.stop.is_set():
                        data = conn.recv(4096)
                        if not data:
                            break
                        buffer += data
                        for message in dns.read_tcp(buffer):
                            result = dns.answer(message, self.zone, dns.TCP_SIZE)
                            if result.label:
                                self.labels.append(result.label)
                            if result.response is not None:
                                conn.sendall(dns.frame_tcp(result.response))
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=2)
        self.udp.close()
        self.tcp.close()


@pytest.fixture
def loopback() -> Iterator[LoopbackServer]:
    need(shutil.which("dig") is not None, "needs the 'dig' program (Debian package dnsutils)")
    server = LoopbackServer(ZONE)
    try:
        yield server
    finally:
        server.close()


def dig(server: LoopbackServer, *args: str) -> str:
    command = ["dig", "@127.0.0.1", "-p", str(server.port), "+time=2", "+tries=1", "+norecurse", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=15, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def records(output: str) -> list[list[str]]:
    """The resource-record lines dig printed, split into fields."""
    return [line.split() for line in output.splitlines() if line and not line.startswith(";")]


def test_dig_sees_nodata_for_a_token_over_udp_and_tcp(loopback: LoopbackServer, bench: Bench) -> None:
    label = encoding.to_label(bench.extended(CLIENT))
    for transport in ("+notcp", "+tcp"):
        output = dig(loopback, transport, f"{label.upper()}.knock.example.com", "A")
        assert "status: NOERROR" in output and " aa" in output.split("flags:")[1].split(";")[0]
        assert "ANSWER: 0, AUTHORITY: 1" in output
        assert f";{label.upper()}.knock.example.com.\tIN\tA".replace("\t", " ") in " ".join(output.split("\t"))
        (soa,) = records(output)
        assert soa[1:4] == ["1", "IN", "SOA"] and soa[4] == "ns1.knock.example.com."
    assert loopback.labels == [label, label]
    assert dns.knock(loopback.labels[0], CLIENT, NOW) is not None


def test_dig_sees_the_apex_soa_and_ns(loopback: LoopbackServer) -> None:
    soa = dig(loopback, "SOA", "knock.example.com")
    assert "status: NOERROR" in soa
    assert records(soa) == [["knock.example.com.", "1", "IN", "SOA", "ns1.knock.example.com.",
                             "hostmaster.knock.example.com.", "1", "3600", "600", "86400", "1"]]
    ns = dig(loopback, "+tcp", "NS", "knock.example.com")
    assert "status: NOERROR" in ns
    assert records(ns) == [
        ["knock.example.com.", "1", "IN", "NS", "ns1.knock.example.com."],
        ["ns1.knock.example.com.", "1", "IN", "A", "192.0.2.53"],
        ["ns1.knock.example.com.", "1", "IN", "AAAA", "2001:db8::53"],
    ]
    refused = dig(loopback, "example.org", "A")
    assert "status: REFUSED" in refused and not records(refused)
    assert loopback.labels == []
