"""Fuzz target: ICMP and ICMPv6 echo requests (``ping -p``), and raw captured packets.

Input: a mode byte, then bytes. Mode 0: the bytes are a whole captured
IP packet (``intake.packet.parse`` on anything). Otherwise they are the echo
data of an ICMP (odd) or ICMPv6 (even) echo request, wrapped in a correct
header, so the fuzzer spends its time in ``icmp.knocks``: both ping layouts,
OTP pattern periods, and every candidate through the gate (``Worker.packet``).

Run: python tests/fuzz/fuzz_icmp.py [libFuzzer options] [corpus dirs]  (docs/fuzzing.md)
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["spa", "harness"]):
    import harness

    from spa.carriers import icmp


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0], data[1:]
    worker = harness.worker()
    if mode == 0:
        worker.packet(body, harness.NOW)
        return
    candidates = icmp.knocks(body, harness.CLIENT, harness.NOW)
    assert len(candidates) <= icmp.MAX_CANDIDATES
    worker.packet(harness.echo(body, 4 if mode & 1 else 6), harness.NOW)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
