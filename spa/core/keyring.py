"""The server's keys, ready for the gate: sub-keys derived, ciphers built once.

Built from the key store and the server's obfuscation key; immutable once
built, so a reload builds a new one and swaps it in whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from . import kdf, otp
from .compact import Obfuscator
from .keys import KeyRecord
from .sequence import StaticSequence


@dataclass(frozen=True)
class KeyEntry:
    """One key with everything the gate needs precomputed."""

    record: KeyRecord
    mac_key: bytes | None
    sequence_key: bytes | None
    aead: ChaCha20Poly1305 | None
    verify_key: Ed25519PublicKey | None
    emergency: dict[str, int] = field(default_factory=dict)  # code -> HOTP counter

    @property
    def name(self) -> str:
        return self.record.name


def _entry(record: KeyRecord) -> KeyEntry:
    secret = record.secret
    emergency: dict[str, int] = {}
    if record.emergency_secret and record.emergency_count:
        codes = otp.emergency_codes(record.emergency_secret, record.emergency_count)
        emergency = {code: counter for counter, code in enumerate(codes)}
    return KeyEntry(
        record=record,
        mac_key=kdf.derive(secret, kdf.TOKEN_MAC) if secret else None,
        sequence_key=kdf.derive(secret, kdf.SEQUENCE) if secret else None,
        aead=ChaCha20Poly1305(kdf.derive(secret, kdf.DATAGRAM_AEAD)) if secret else None,
        verify_key=Ed25519PublicKey.from_public_bytes(record.public_key) if record.public_key else None,
        emergency=emergency,
    )


class Keyring:
    """Keys by id and by name, the obfuscation cipher and the wire AEAD.

    Fixed port sequences live here too: like keys, they are what lets
    someone in, and a reload replaces them together.
    """

    def __init__(
        self, obfuscation_key: bytes, records: list[KeyRecord], statics: tuple[StaticSequence, ...] = ()
    ) -> None:
        self.obfuscator = Obfuscator(obfuscation_key)
        self.wire = ChaCha20Poly1305(kdf.derive(obfuscation_key, kdf.WIRE))
        self.server_id = kdf.derive(obfuscation_key, kdf.SERVER_ID)  # what kind 1 signatures are bound to
        self.by_id: dict[int, KeyEntry] = {}
        self.by_name: dict[str, KeyEntry] = {}
        for record in records:
            entry = _entry(record)
            self.by_id[record.key_id] = entry
            self.by_name[record.name] = entry
        self.statics: dict[str, StaticSequence] = {static.name: static for static in statics}

    def __len__(self) -> int:
        return len(self.by_id)

    def find(self, who: str | int) -> KeyEntry | None:
        return self.by_id.get(who) if isinstance(who, int) else self.by_name.get(who)
