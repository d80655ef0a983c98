"""Fuzz target: DNS queries, as spa answers them on port 53 and sniffs them beside another server.

Input: one DNS message. Its first byte also picks the transport limit
(UDP 512, EDNS 1232, TCP). Covers ``dns.answer``, ``dns.sniff``,
``dns.read_tcp`` and, for a label under the zone, ``dns.knock``, the OTP
label parser, the base32 decoder and the gate (via ``Worker.label``).
Invariants beyond "no exception": sniff reads the same label answer does,
an answer fits the limit, and TCP framing gives back what was framed.

Run: python tests/fuzz/fuzz_dns.py [libFuzzer options] [corpus dirs]  (docs/fuzzing.md)
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["spa", "harness"]):
    import harness

    from spa.carriers import dns

LIMITS = (dns.UDP_SIZE, dns.EDNS_SIZE, dns.TCP_SIZE)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    limit = LIMITS[data[0] % len(LIMITS)]
    worker = harness.worker()
    query = worker.dns_query(data, limit)
    assert query.response is None or len(query.response) <= max(limit, dns.EDNS_SIZE), len(query.response)
    assert worker.zone is not None
    assert dns.sniff(data, worker.zone) == query.label
    if query.label is not None:
        worker.label(query.label, harness.CLIENT, harness.NOW)
    buffer = bytearray(data)
    framed = dns.read_tcp(buffer)
    assert b"".join(dns.frame_tcp(m) for m in framed) + bytes(buffer) == data


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
