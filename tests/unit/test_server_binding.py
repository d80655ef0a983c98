"""Issue 13: a signed datagram for one server must not open another.

bob registers one Ed25519 key, with the same key id, on two servers (as
people do with ssh keys). mallory is a client of both, so she holds both
obfuscation keys ``O``; with them she can unwrap bob's datagram for server
A (header under ``O_A``, body under the wire key of ``O_A``) and wrap the
same signed body for server B. The signature must cover which server it
was made for, so B refuses it.
"""

from __future__ import annotations

import ipaddress

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from makings import BOB_SEED, NOW, SSH

from spa.client import tokens
from spa.core import kdf
from spa.core.events import Accepted, Carrier, Form, Knock, Reason, Rejection
from spa.core.gate import Gate
from spa.core.keyring import Keyring
from spa.core.keys import ClientKey, KeyRecord
from spa.core.ledger import Ledger
from spa.core.policy import Policy

O_A = bytes(range(100, 132))
O_B = bytes(range(150, 182))
BOB = ipaddress.ip_address("198.51.100.20")


def server(obfuscation_key: bytes) -> Gate:
    public = Ed25519PrivateKey.from_private_bytes(BOB_SEED).public_key().public_bytes_raw()
    record = KeyRecord(name="bob", key_id=8, policy=Policy(open=(SSH,)), public_key=public)
    return Gate(Keyring(obfuscation_key, [record]), Ledger(retention=700))


def bobs_datagram(obfuscation_key: bytes) -> bytes:
    key = ClientKey("bob", 8, "192.0.2.1", obfuscation_key, (SSH,), signing_key=BOB_SEED)
    return tokens.spa_datagram(key, NOW, source=BOB)


def _ecb(key: bytes, block: bytes, decrypt: bool) -> bytes:
    cipher = Cipher(algorithms.AES(key), modes.ECB())
    context = cipher.decryptor() if decrypt else cipher.encryptor()
    return context.update(block) + context.finalize()


def rewrap(packet: bytes, old: bytes, new: bytes, bound: bytes) -> bytes:
    """What mallory does with both servers' O: new wrapping, same signed body."""
    header = _ecb(old, packet[:16], decrypt=True)
    old_wire = ChaCha20Poly1305(kdf.derive(old, kdf.WIRE))
    payload = old_wire.decrypt(packet[:12], packet[16:], b"spa1 datagram" + packet[:16] + bound)
    sealed = _ecb(new, header, decrypt=False)
    new_wire = ChaCha20Poly1305(kdf.derive(new, kdf.WIRE))
    return sealed + new_wire.encrypt(sealed[:12], payload, b"spa1 datagram" + sealed + bound)


def decide(gate: Gate, packet: bytes) -> object:
    return gate.decide(Knock(Carrier.UDP, Form.DATAGRAM, packet, BOB, NOW))


def test_bobs_datagram_opens_the_server_it_was_made_for() -> None:
    assert isinstance(decide(server(O_A), bobs_datagram(O_A)), Accepted)
    assert isinstance(decide(server(O_B), bobs_datagram(O_B)), Accepted)


def test_a_signed_datagram_rewrapped_for_another_server_is_refused() -> None:
    forged = rewrap(bobs_datagram(O_A), O_A, O_B, BOB.packed)
    decision = decide(server(O_B), forged)
    assert isinstance(decision, Rejection), "a datagram made for server A opened server B"
    assert decision.reason == Reason.BAD_MAC
