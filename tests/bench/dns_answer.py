"""DNS answers per second on one core: spa's answer() against a dnslib baseline.

Usage: python tests/bench/dns_answer.py [--seconds 1] [--json]

Each case runs a fixed list of messages through ``answer`` for about
``--seconds`` and reports messages per second: token queries as a stub
sends them (no EDNS) and as a resolver does (EDNS0, random 0x20 case),
apex NS queries, and junk (random bytes behind a query header: the flood
case). The dnslib line is what parse + reply + pack through dnslib costs
for the token query, the reason spa has its own query reader.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import random
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dnslib import EDNS0, QTYPE, RR, SOA, DNSHeader, DNSQuestion, DNSRecord  # noqa: E402
from figures import print_results  # noqa: E402 - a sibling module; the script's directory is on sys.path

from spa.carriers import dns  # noqa: E402
from spa.core import encoding  # noqa: E402

ZONE = dns.Zone.build("knock.example.com", addresses=(ipaddress.ip_address("192.0.2.53"),))


def token_queries(count: int, edns: bool) -> list[bytes]:
    rng = random.Random(count)
    messages = []
    for n in range(count):
        label = encoding.to_label(os.urandom(20))
        if edns:
            label = "".join(c.upper() if rng.random() < 0.5 else c for c in label)
        record = DNSRecord(DNSHeader(id=n & 0xFFFF, rd=1), q=DNSQuestion(f"{label}.knock.example.com", QTYPE.A))
        if edns:
            record.add_ar(EDNS0(udp_len=1232, flags="do"))
        messages.append(record.pack())
    return messages


def junk(count: int) -> list[bytes]:
    return [struct.pack(">6H", n & 0xFFFF, 0x0100, 1, 0, 0, 0) + os.urandom(40) for n in range(count)]


def rate(handle: Callable[[bytes], object], messages: list[bytes], seconds: float) -> float:
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for message in messages:
            handle(message)
        done += len(messages)
    return done / (time.perf_counter() - start)


def dnslib_reply(message: bytes) -> bytes:
    """The same NODATA answer built the straightforward way, through dnslib."""
    request = DNSRecord.parse(message)
    response = request.reply(aa=1)
    response.add_auth(RR("knock.example.com", QTYPE.SOA, ttl=1,
                         rdata=SOA("ns1.knock.example.com", "hostmaster.knock.example.com",
                                   (1, 3600, 600, 86400, 1))))
    return response.pack()


def measure(seconds: float) -> dict[str, Any]:
    def ours(message: bytes) -> object:
        return dns.answer(message, ZONE)

    cases = {
        "token_stub": token_queries(2000, edns=False),
        "token_resolver": token_queries(2000, edns=True),
        "apex_ns": [DNSRecord.question("knock.example.com", "NS").pack()] * 2000,
        "junk": junk(2000),
    }
    results: dict[str, Any] = {"python": sys.version.split()[0]}
    for name, messages in cases.items():
        results[f"{name}_per_s"] = round(rate(ours, messages, seconds))
    results["dnslib_token_stub_per_s"] = round(rate(dnslib_reply, cases["token_stub"][:500], seconds))
    results["sniff_per_s"] = round(rate(lambda m: dns.sniff(m, ZONE), cases["token_resolver"], seconds))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = measure(args.seconds)
    print_results(results, args.json)


if __name__ == "__main__":
    main()
