"""Fuzz target: port sequences, as TCP SYNs and UDP datagrams to knock ports.

Input: 4-byte records (who: UDP bit and one of four sources; destination
port; time step), see ``harness.play_sequence``; each becomes one captured
packet (a TCP SYN or a UDP datagram), fed
to ``Worker.packet`` in order. Covers ``intake.packet.parse`` for TCP and
UDP, the sequence ``Tracker`` (fixed and one-time sequences, retransmits,
timeouts, time going backwards) and the gate's sequence checks. Corpus
files hold the one-time sequences of the test-vector key, so completions
are reachable.

Run: python tests/fuzz/fuzz_sequence.py [libFuzzer options] [corpus dirs]  (docs/fuzzing.md)
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["spa", "harness"]):
    import harness


def test_one_input(data: bytes) -> None:
    harness.play_sequence(harness.worker(), data)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
