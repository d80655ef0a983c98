"""docs/test-vectors.json: produced by the package, and consistent with docs/protocol.md.

The second half re-derives every vector from the spec's formulas with raw
primitives (AES, HMAC, ChaCha20-Poly1305, Ed25519), not with spa's code, so
a wrong sentence in the spec or a drift in the code both fail here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
from typing import Any

import pyotp
import pytest
import vectors
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

VECTORS: dict[str, Any] = json.loads(vectors.PATH.read_text())
KEYS = VECTORS["keys"]
O = bytes.fromhex(KEYS["obfuscation_key"])
S = bytes.fromhex(KEYS["secret"])


def aes(key: bytes, block: bytes, decrypt: bool = False) -> bytes:
    cipher = Cipher(algorithms.AES(key), modes.ECB())
    context = cipher.decryptor() if decrypt else cipher.encryptor()
    return context.update(block) + context.finalize()


def h(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def packed(address: str | None) -> bytes:
    return ipaddress.ip_address(address).packed if address else b""


def label(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=").lower()


def test_the_file_is_what_the_package_produces() -> None:
    assert vectors.PATH.read_text() == vectors.render(), "run: python tests/unit/vectors.py --write"


def test_subkeys_follow_the_spec() -> None:
    assert KEYS["mac_key"] == h(S, b"spa1 token mac").hex()
    assert KEYS["datagram_aead_key"] == h(S, b"spa1 datagram aead").hex()
    assert KEYS["sequence_key"] == h(S, b"spa1 sequence").hex()
    assert KEYS["wire_key"] == h(O, b"spa1 datagram wire").hex()
    assert KEYS["server_id"] == h(O, b"spa1 server id").hex()


@pytest.mark.parametrize("case", VECTORS["compact"])
def test_compact_follows_the_spec(case: dict[str, Any]) -> None:
    mode = 0 if case["mode"] == "source" else 1
    head = bytes([0x10 | mode]) + KEYS["key_id"].to_bytes(2, "big") + case["time"].to_bytes(4, "big")
    head += bytes([case["request_index"]])
    mac = h(bytes.fromhex(KEYS["mac_key"]), b"spa1 compact" + head + packed(case["address"]))[:8]
    token = aes(O, head + mac)
    assert case["plaintext"] == (head + mac).hex() and case["token"] == token.hex()
    assert case["dns_label"] == label(token) and case["ping_pattern"] == token.hex()
    assert len(case["dns_label"]) == 26 and len(case["ping_pattern"]) == 32


@pytest.mark.parametrize("case", VECTORS["extended"])
def test_extended_follows_the_spec(case: dict[str, Any]) -> None:
    head = bytes([0x12]) + KEYS["key_id"].to_bytes(2, "big") + case["time"].to_bytes(4, "big") + b"\x00"
    address = packed(case["address"])
    token = aes(O, head + h(bytes.fromhex(KEYS["mac_key"]), b"spa1 compact" + head + address)[:8])
    hidden = bytes(a ^ b for a, b in zip(address, aes(O, token)))
    assert case["token"] == (token + hidden).hex() and case["dns_label"] == label(token + hidden)
    assert len(case["dns_label"]) <= 63


@pytest.mark.parametrize("case", VECTORS["datagram"])
def test_datagram_follows_the_spec(case: dict[str, Any]) -> None:
    packet = bytes.fromhex(case["datagram"])
    signed = case["kind"] == "signed"
    header = bytes([0x20 | signed]) + KEYS["key_id"].to_bytes(2, "big") + case["time"].to_bytes(4, "big")
    header += bytes.fromhex(case["random"])
    sealed = aes(O, header)
    assert packet[:16] == sealed
    bound = packed(case["packet_source"]) if case["mode"] == "source" else b""
    key = bytes.fromhex(KEYS["wire_key"] if signed else KEYS["datagram_aead_key"])
    payload = ChaCha20Poly1305(key).decrypt(sealed[:12], packet[16:], b"spa1 datagram" + sealed + bound)
    modes_ = {"source": 0, "unbound": 1, "ipv4": 4, "ipv6": 6}
    body = bytes([modes_[case["mode"]]]) + packed(case["address"]) + case["seconds"].to_bytes(2, "big")
    body += bytes([len(case["requests"])])
    for request in case["requests"]:
        proto, port = request.split("/")
        body += bytes([{"tcp": 6, "udp": 17}[proto]]) + int(port).to_bytes(2, "big")
    assert case["body"] == body.hex()
    if signed:
        assert payload[: len(body)] == body and len(payload) == len(body) + 64
        public = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(KEYS["signing_seed"])).public_key()
        server_id = bytes.fromhex(KEYS["server_id"])
        public.verify(payload[len(body):], b"spa1 datagram sig" + server_id + header + body + bound)
    else:
        assert payload == body


@pytest.mark.parametrize("case", VECTORS["totp"])
def test_totp_follows_the_spec(case: dict[str, Any]) -> None:
    code = pyotp.TOTP(KEYS["totp_secret"]).at(case["time"])
    assert case["code"] == code and case["counter"] == case["time"] // 30
    assert case["dns_label"] == f"alice-{code}"
    assert case["ping_pattern"] == f"{KEYS['key_id']:04x}{code}"
    assert case["dns_label_with_address"] == f"alice-{code}-198-51-100-7"


@pytest.mark.parametrize("case", VECTORS["emergency"])
def test_emergency_codes_follow_the_spec(case: dict[str, Any]) -> None:
    assert case["code"] == pyotp.HOTP(case["secret"], digits=10).at(case["counter"])
    assert case["ping_pattern"] == f"{KEYS['key_id']:04x}{case['code']}"


@pytest.mark.parametrize("case", VECTORS["sequence"])
def test_sequence_follows_the_spec(case: dict[str, Any]) -> None:
    span = case["high"] - case["low"] + 1
    ports: list[int] = []
    block = 0
    while len(ports) < case["length"]:
        message = b"spa1 sequence" + case["step"].to_bytes(8, "big") + bytes([case["request_index"], block])
        digest = h(bytes.fromhex(KEYS["sequence_key"]), message)
        for i in range(0, 32, 2):
            draw = int.from_bytes(digest[i : i + 2], "big")
            port = case["low"] + draw % span
            if draw < 65536 - 65536 % span and port not in ports and len(ports) < case["length"]:
                ports.append(port)
        block += 1
    assert case["ports"] == ports
