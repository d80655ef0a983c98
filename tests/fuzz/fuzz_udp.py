"""Fuzz target: SPA datagrams on the UDP knock port, including bodies behind a valid AEAD.

Input: a mode byte, then bytes. Its low 7 bits modulo 3 pick the mode; in
modes 1 and 2 its top bit binds the AEAD to the source (mode SOURCE).

- mode 0: the bytes are the UDP payload as sent (``udp.knock``, then the
  gate's header check and AEAD, as ``Worker.packet`` does).
- mode 1: the bytes are a datagram *body*, sealed here with the test-vector
  key under a valid header, so the AEAD passes and ``datagram.decode_body``,
  policy and grant code see fuzzed plaintext. Random bytes on the wire never
  get that far; only this mode can find a bug past authentication.
- mode 2: the same with the server-wide wire key (a kind 1 header), so the
  Ed25519 length and signature checks see fuzzed bodies.

Run: python tests/fuzz/fuzz_udp.py [libFuzzer options] [corpus dirs]  (docs/fuzzing.md)
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["spa", "harness"]):
    import harness

    from spa.core import datagram


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = (data[0] & 0x7F) % 3, data[1:]
    if mode == 0:
        payload = body
    else:
        payload = harness.seal_body(body[: datagram.MAX_SIZE], mode - 1, bound=bool(data[0] & 0x80))
    harness.worker().packet(harness.udp(harness.UDP_PORT, payload), harness.NOW)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
