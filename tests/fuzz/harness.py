"""What every fuzz target shares: a real spa Worker with the test-vector keys, and packet builders.

Imported by each ``fuzz_*.py`` inside ``atheris.instrument_imports()``, so
spa's modules are instrumented for coverage. The keys are the public
test-vector keys (docs/test-vectors.json), so corpus files made by
``make_corpus.py`` carry tokens the gate accepts and the fuzzer starts from
the paths a real knock takes, not only from the junk paths.

A fresh Worker (gate, ledger, tracker) per input keeps every run
reproducible from its input alone: no state leaks from one input to the next.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import ipaddress
import struct
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305  # noqa: E402

from spa import config as config_module  # noqa: E402
from spa.cli import main  # noqa: E402
from spa.core import compact, datagram, kdf  # noqa: E402
from spa.core.events import Decision  # noqa: E402
from spa.core.keyring import Keyring  # noqa: E402
from spa.core.keys import KeyRecord  # noqa: E402
from spa.core.ledger import Ledger  # noqa: E402
from spa.daemon.worker import Worker  # noqa: E402

NOW = 1_760_000_000  # the test vectors' time
OBFUSCATION_KEY = bytes(range(32))
SECRET = bytes(range(32, 64))
SIGNING_SEED = bytes(range(64, 96))
TOTP_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
EMERGENCY_SECRET = "KRSXG5CTMVRXEZLUKRSXG5CTMVRXEZLU"
ZONE = "knock.example.com"
UDP_PORT = 62201
CLIENT = ipaddress.ip_address("198.51.100.7")
CLIENT6 = ipaddress.ip_address("2001:db8::7")
SERVER = ipaddress.ip_address("192.0.2.1")
SERVER6 = ipaddress.ip_address("2001:db8::1")
DOOR = ("tcp/7000", "udp/8000", "tcp/9000")


def _config() -> tuple[config_module.Config, str]:
    """The configuration ``spa init`` writes, with every carrier on and one fixed sequence, and its text.

    Made in a directory removed at once: the worker never reads the files
    the config names (keys come from KEYRING below), and libFuzzer's exit
    would skip any clean-up registered for later.
    """
    with tempfile.TemporaryDirectory(prefix="spa-fuzz-") as name:
        directory = Path(name) / "srv"
        with contextlib.redirect_stdout(io.StringIO()):
            code = main(["init", "--dir", str(directory), "--protect", "tcp/22,tcp/3389", "--zone", ZONE,
                         "--backend", "dry-run"])
        assert code == 0, "spa init failed"
        path = directory / "spa.toml"
        ports = ", ".join(f'"{p}"' for p in DOOR)
        path.write_text(path.read_text() + f'\n[sequences.door]\nports = [{ports}]\nopen = ["tcp/22"]\n')
        # The file names its own directory in a comment; a stable name keeps corpus seeds stable.
        return config_module.load(path), path.read_text().replace(str(directory), "/etc/spa")


CONFIG, CONFIG_TEXT = _config()
_POLICY = dataclasses.replace(CONFIG.policy, allow_unbound=True, allow_codes=True)
KEYRING = Keyring(
    OBFUSCATION_KEY,
    [
        KeyRecord("alice", 7, _POLICY, secret=SECRET, totp_secret=TOTP_SECRET,
                  emergency_secret=EMERGENCY_SECRET, emergency_count=5),
        KeyRecord("bob", 8, _POLICY,
                  public_key=Ed25519PrivateKey.from_private_bytes(SIGNING_SEED).public_key().public_bytes_raw()),
    ],
    CONFIG.statics,
)


def worker() -> Worker:
    """A fresh worker: its own gate, ledger and sequence tracker; grants are kept, not sent."""
    return Worker(CONFIG, KEYRING, Ledger(CONFIG.gate.time_window + 600), lambda _message: None)


# -- packets as AF_PACKET/SOCK_DGRAM hands them over (from the IP header on) ---------------


def ipv4(protocol: int, payload: bytes, source: ipaddress.IPv4Address = CLIENT) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, protocol, 0,
                         source.packed, SERVER.packed)
    return header + payload


def ipv6(next_header: int, payload: bytes, source: ipaddress.IPv6Address = CLIENT6) -> bytes:
    header = struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, 64, source.packed, SERVER6.packed)
    return header + payload


def echo(data: bytes, version: int = 4) -> bytes:
    """An ICMP (or ICMPv6) echo request carrying ``data``; checksums are not checked by spa."""
    if version == 4:
        return ipv4(1, struct.pack("!BBHHH", 8, 0, 0, 0x1234, 1) + data)
    return ipv6(58, struct.pack("!BBHHH", 128, 0, 0, 0x1234, 1) + data)


def udp(port: int, data: bytes, source: ipaddress.IPv4Address = CLIENT, sport: int = 40000) -> bytes:
    return ipv4(17, struct.pack("!HHHH", sport, port, 8 + len(data), 0) + data, source)


def syn(port: int, source: ipaddress.IPv4Address = CLIENT) -> bytes:
    return ipv4(6, struct.pack("!HHIIBBHHH", 40000, port, 0, 0, 5 << 4, 0x02, 65535, 0, 0), source)


# -- what the UDP and sequence targets make of their input -----------------------------------

_OBFUSCATOR = compact.Obfuscator(OBFUSCATION_KEY)
_AEAD = ChaCha20Poly1305(kdf.derive(SECRET, kdf.DATAGRAM_AEAD))
_WIRE = ChaCha20Poly1305(kdf.derive(OBFUSCATION_KEY, kdf.WIRE))


def seal_body(body: bytes, kind: int, bound: bool) -> bytes:
    """A datagram whose header and AEAD are right and whose plaintext body is ``body``.

    Kind 0 under alice's key, kind 1 under the wire key for bob; ``bound``
    puts the client's address in the AEAD's associated data (mode SOURCE).
    """
    key_id = 7 if kind == 0 else 8
    plain = bytes([datagram.VERSION << 4 | kind, 0, key_id]) + NOW.to_bytes(4, "big") + bytes(9)
    sealed = _OBFUSCATOR.encrypt_block(plain)
    aad = datagram.AAD_CONTEXT + sealed + (CLIENT.packed if bound else b"")
    return sealed + (_AEAD if kind == 0 else _WIRE).encrypt(sealed[:12], body, aad)


SEQUENCE_SOURCES = tuple(ipaddress.IPv4Address(f"198.51.100.{n}") for n in (7, 8, 9, 10))


def play_sequence(worker: Worker, data: bytes) -> list[Decision]:
    """Feed 4-byte records as packets: who (bit 7: UDP, else a TCP SYN; low bits: which
    of four sources), the destination port (2 bytes), a time step.

    The step byte moves the clock by (step - 128) / 16 seconds: mostly
    small moves, sometimes back in time or past a timeout.
    """
    decisions = []
    now = float(NOW)
    for at in range(0, len(data) - 3, 4):
        who, high, low, step = data[at : at + 4]
        port = high << 8 | low
        source = SEQUENCE_SOURCES[who % len(SEQUENCE_SOURCES)]
        now += (step - 128) / 16
        decision = worker.packet(udp(port, b"", source) if who & 0x80 else syn(port, source), now)
        if decision is not None:
            decisions.append(decision)
    return decisions
