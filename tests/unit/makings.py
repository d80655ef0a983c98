"""Shared makings for unit tests: fixed keys, a keyring and a gate at a fixed time.

Imported by name (pytest puts this directory on sys.path).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from spa.core import compact, datagram, kdf
from spa.core.events import Carrier, Form, IPAddress, Knock, Request
from spa.core.gate import Gate, GateSettings
from spa.core.keyring import Keyring
from spa.core.keys import KeyRecord
from spa.core.ledger import Ledger
from spa.core.policy import Policy

NOW = 1_760_000_000  # a fixed server clock, Unix seconds
OBFUSCATION_KEY = bytes(range(32))
SERVER_ID = kdf.derive(OBFUSCATION_KEY, kdf.SERVER_ID)  # what bob's signed datagrams are bound to
ALICE_SECRET = bytes(range(32, 64))
BOB_SEED = bytes(range(64, 96))
TOTP_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
EMERGENCY_SECRET = "KRSXG5CTMVRXEZLUKRSXG5CTMVRXEZLU"
CLIENT = ipaddress.ip_address("198.51.100.7")
OTHER = ipaddress.ip_address("203.0.113.9")
CLIENT6 = ipaddress.ip_address("2001:db8::7")
SSH = Request("tcp", 22)
RDP = Request("tcp", 3389)


def alice_record(**policy: object) -> KeyRecord:
    return KeyRecord(
        name="alice",
        key_id=7,
        policy=Policy(open=(SSH, RDP), **{"allow_codes": True, **policy}),  # type: ignore[arg-type]
        secret=ALICE_SECRET,
        totp_secret=TOTP_SECRET,
        emergency_secret=EMERGENCY_SECRET,
        emergency_count=5,
    )


def bob_record() -> KeyRecord:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public = Ed25519PrivateKey.from_private_bytes(BOB_SEED).public_key().public_bytes_raw()
    return KeyRecord(name="bob", key_id=8, policy=Policy(open=(SSH,)), public_key=public)


@dataclass
class Bench:
    """A gate with alice (secret, TOTP, emergency codes) and bob (Ed25519)."""

    gate: Gate
    keyring: Keyring
    ledger: Ledger

    @property
    def obfuscator(self) -> compact.Obfuscator:
        return self.keyring.obfuscator

    def compact(self, time: int = NOW, index: int = 0, address: IPAddress | None = CLIENT) -> bytes:
        mac_key = kdf.derive(ALICE_SECRET, kdf.TOKEN_MAC)
        return compact.seal_compact(self.obfuscator, mac_key, 7, time, index, address)

    def extended(self, address: IPAddress = CLIENT, time: int = NOW, index: int = 0) -> bytes:
        mac_key = kdf.derive(ALICE_SECRET, kdf.TOKEN_MAC)
        return compact.seal_extended(self.obfuscator, mac_key, 7, time, index, address)

    def datagram(self, body: datagram.Body, time: int = NOW, source: IPAddress | None = None) -> bytes:
        key = kdf.derive(ALICE_SECRET, kdf.DATAGRAM_AEAD)
        return datagram.seal(self.obfuscator, 7, time, body, aead_key=key, source=source)

    def decide(self, form: Form, payload: object, source: IPAddress = CLIENT,
               at: float = NOW, carrier: Carrier = Carrier.ICMP):
        return self.gate.decide(Knock(carrier, form, payload, source, at))  # type: ignore[arg-type]


def make_bench(settings: GateSettings | None = None, **policy: object) -> Bench:
    keyring = Keyring(OBFUSCATION_KEY, [alice_record(**policy), bob_record()])
    ledger = Ledger(retention=(settings or GateSettings()).time_window + 600)
    return Bench(Gate(keyring, ledger, settings), keyring, ledger)
