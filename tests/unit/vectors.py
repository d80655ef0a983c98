"""Builds docs/test-vectors.json from fixed inputs with the spa package.

Run ``python tests/unit/vectors.py --write`` after a deliberate format
change; test_vectors.py checks the file against the package and against an
independent reading of docs/protocol.md.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from spa.core import compact, datagram, encoding, kdf, otp, sequence  # noqa: E402
from spa.core.events import Request  # noqa: E402

PATH = Path(__file__).resolve().parents[2] / "docs" / "test-vectors.json"

OBFUSCATION_KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
SECRET = bytes.fromhex("202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f")
SIGNING_SEED = bytes.fromhex("404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f")
TOTP_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
KEY_ID = 7
TIME = 1760000000
OPEN = ["tcp/22", "tcp/3389"]


def build() -> dict[str, Any]:
    obfuscator = compact.Obfuscator(OBFUSCATION_KEY)
    mac_key = kdf.derive(SECRET, kdf.TOKEN_MAC)
    out: dict[str, Any] = {
        "description": "spa token test vectors; layouts in docs/protocol.md. All byte strings are hex.",
        "keys": {
            "obfuscation_key": OBFUSCATION_KEY.hex(),
            "secret": SECRET.hex(),
            "mac_key": mac_key.hex(),
            "datagram_aead_key": kdf.derive(SECRET, kdf.DATAGRAM_AEAD).hex(),
            "sequence_key": kdf.derive(SECRET, kdf.SEQUENCE).hex(),
            "wire_key": kdf.derive(OBFUSCATION_KEY, kdf.WIRE).hex(),
            "server_id": kdf.derive(OBFUSCATION_KEY, kdf.SERVER_ID).hex(),
            "signing_seed": SIGNING_SEED.hex(),
            "totp_secret": TOTP_SECRET,
            "key_id": KEY_ID,
            "open": OPEN,
        },
        "compact": [],
        "extended": [],
        "datagram": [],
        "totp": [],
        "emergency": [],
        "sequence": [],
    }
    for address, index in (("198.51.100.7", 0), ("2001:db8::7", 1), (None, 0)):
        ip = ipaddress.ip_address(address) if address else None
        token = compact.seal_compact(obfuscator, mac_key, KEY_ID, TIME, index, ip)
        out["compact"].append({
            "time": TIME, "request_index": index, "request": OPEN[index],
            "address": address, "mode": "source" if ip else "unbound",
            "plaintext": obfuscator.decrypt_block(token).hex(),
            "token": token.hex(), "dns_label": encoding.to_label(token), "ping_pattern": encoding.to_pattern(token),
        })
    for address in ("198.51.100.7", "2001:db8::7"):
        data = compact.seal_extended(obfuscator, mac_key, KEY_ID, TIME, 0, ipaddress.ip_address(address))
        out["extended"].append({
            "time": TIME, "request_index": 0, "address": address,
            "plaintext": obfuscator.decrypt_block(data[:16]).hex(),
            "token": data.hex(), "dns_label": encoding.to_label(data),
        })
    signer = Ed25519PrivateKey.from_private_bytes(SIGNING_SEED)
    cases = [
        ("aead", datagram.Body(datagram.Mode.SOURCE, (Request("tcp", 22),), 0), "198.51.100.7"),
        ("aead", datagram.Body(datagram.Mode.IPV4, (Request("tcp", 22), Request("tcp", 3389)), 120,
                               ipaddress.ip_address("203.0.113.9")), "192.0.2.53"),
        ("signed", datagram.Body(datagram.Mode.IPV6, (Request("udp", 51820),), 60,
                                 ipaddress.ip_address("2001:db8::7")), "2001:db8::53"),
    ]
    for n, (kind, body, source) in enumerate(cases):
        random = bytes([0xA0 + n]) * 9
        signed = kind == "signed"
        packet = datagram.seal(
            obfuscator, KEY_ID, TIME, body,
            aead_key=kdf.derive(OBFUSCATION_KEY, kdf.WIRE) if signed else kdf.derive(SECRET, kdf.DATAGRAM_AEAD),
            signing_key=signer if signed else None,
            server_id=kdf.derive(OBFUSCATION_KEY, kdf.SERVER_ID) if signed else None,
            source=ipaddress.ip_address(source) if body.mode == datagram.Mode.SOURCE else None,
            random=random,
        )
        out["datagram"].append({
            "kind": kind, "time": TIME, "random": random.hex(), "packet_source": source,
            "mode": body.mode.name.lower(), "address": str(body.address) if body.address else None,
            "requests": [str(r) for r in body.requests], "seconds": body.seconds,
            "body": datagram.encode_body(body).hex(), "datagram": packet.hex(),
        })
    for time in (TIME, TIME + 29, TIME + 30):
        code = otp.totp(TOTP_SECRET).at(time)
        out["totp"].append({
            "time": time, "counter": time // 30, "code": code,
            "dns_label": otp.to_label("alice", code), "ping_pattern": otp.to_pattern(KEY_ID, code),
            "dns_label_with_address": otp.to_label("alice", code, ipaddress.ip_address("198.51.100.7")),
        })
    for counter, code in enumerate(otp.emergency_codes(TOTP_SECRET, 3)):
        out["emergency"].append({
            "secret": TOTP_SECRET, "counter": counter, "code": code,
            "dns_label": otp.to_label("alice", code), "ping_pattern": otp.to_pattern(KEY_ID, code),
        })
    rule = sequence.SequenceRule()
    for step, index in ((TIME // 30, 0), (TIME // 30 + 1, 0), (TIME // 30, 1)):
        out["sequence"].append({
            "step": step, "request_index": index, "length": rule.length, "low": rule.low, "high": rule.high,
            "step_seconds": rule.step_seconds,
            "ports": list(sequence.ports(kdf.derive(SECRET, kdf.SEQUENCE), step, index, rule)),
        })
    return out


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        PATH.write_text(render())
        print(f"wrote {PATH}")
    else:
        sys.stdout.write(render())
