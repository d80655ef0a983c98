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
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from spa.core import compact, datagram, encoding, kdf, otp, sequence  # noqa: E402
from spa.core.events import Request  # noqa: E402

PATH = Path(__file__).resolve().parents[2] / "docs" / "test-vectors.json"

OBFUSCATION_KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
SECRET = bytes.fromhex("202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f")
SIGNING_SEED = bytes.fromhex("404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f")
TOTP_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
EMERGENCY_SECRET = "KRSXG5CTMVRXEZLUKRSXG5CTMVRXEZLU"  # not the TOTP secret: a mix-up fails the vectors
EMERGENCY_COUNT = 3  # live counters: 0, 1, 2
OTHER_SERVER_KEY = bytes.fromhex("606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f")
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
            "emergency_secret": EMERGENCY_SECRET,
            "emergency_count": EMERGENCY_COUNT,
            "name": "alice",
            "other_server_obfuscation_key": OTHER_SERVER_KEY.hex(),
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
        ("signed", datagram.Body(datagram.Mode.IPV6, (Request("tcp", 3389),), 60,
                                 ipaddress.ip_address("2001:db8::7")), "2001:db8::53"),
        # B is not empty here: a signature that leaves B out fails this one.
        ("signed", datagram.Body(datagram.Mode.SOURCE, (Request("tcp", 22), Request("tcp", 3389)), 0),
         "198.51.100.7"),
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
    out["code_labels"] = code_labels()
    for counter, code in enumerate(otp.emergency_codes(EMERGENCY_SECRET, EMERGENCY_COUNT)):
        out["emergency"].append({
            "secret": EMERGENCY_SECRET, "counter": counter, "code": code,
            "dns_label": otp.to_label("alice", code), "ping_pattern": otp.to_pattern(KEY_ID, code),
        })
    rule = sequence.SequenceRule()
    for step, index in ((TIME // 30, 0), (TIME // 30 + 1, 0), (TIME // 30, 1)):
        out["sequence"].append({
            "step": step, "request_index": index, "length": rule.length, "low": rule.low, "high": rule.high,
            "step_seconds": rule.step_seconds,
            "ports": list(sequence.ports(kdf.derive(SECRET, kdf.SEQUENCE), step, index, rule)),
        })
    # A narrow range and 8 ports: draws repeat (skip them); a range of 32769
    # rejects half the draws, so one HMAC block is not enough.
    for wide in (sequence.SequenceRule(length=8, low=20000, high=20031),
                 sequence.SequenceRule(length=8, low=20000, high=52768)):
        out["sequence"].append({
            "step": TIME // 30, "request_index": 0, "length": wide.length, "low": wide.low, "high": wide.high,
            "step_seconds": wide.step_seconds,
            "ports": list(sequence.ports(kdf.derive(SECRET, kdf.SEQUENCE), TIME // 30, 0, wide)),
        })
    out["gate"] = gate_cases()
    return out


# -- the cases a server must get right, run against the gate by test_vectors.py

WINDOW = 60  # the default time_window: |token time - server time| <= WINDOW is accepted


def _aes(key: bytes, block: bytes) -> bytes:
    return compact.Obfuscator(key).encrypt_block(block)


def raw_compact(mode: int, time: int, index: int, mac_address: bytes, key: bytes = OBFUSCATION_KEY) -> bytes:
    """A compact token with any mode and any bytes as A: for tokens a server must refuse."""
    head = bytes([0x10 | mode]) + KEY_ID.to_bytes(2, "big") + time.to_bytes(4, "big") + bytes([index])
    return _aes(key, head + compact.compute_mac(kdf.derive(SECRET, kdf.TOKEN_MAC), head, mac_address))


def raw_extended(mode: int, address: bytes, time: int = TIME) -> bytes:
    token = raw_compact(mode, time, 0, address)
    return token + bytes(a ^ b for a, b in zip(address, _aes(OBFUSCATION_KEY, token), strict=False))


def raw_datagram(body: bytes, bound: bytes, random: bytes, *, signed: bool = False, sign_bound: bytes | None = None,
                 server_id: bytes | None = None, trailing: bytes = b"", key: bytes = OBFUSCATION_KEY) -> bytes:
    """A datagram from raw body bytes: B in the AAD, and for kind 1 what the signature covers."""
    header = bytes([0x20 | signed]) + KEY_ID.to_bytes(2, "big") + TIME.to_bytes(4, "big") + random
    sealed = _aes(key, header)
    payload = body
    if signed:
        signer = Ed25519PrivateKey.from_private_bytes(SIGNING_SEED)
        ident = kdf.derive(key, kdf.SERVER_ID) if server_id is None else server_id
        covered = bound if sign_bound is None else sign_bound
        payload += signer.sign(b"spa1 datagram sig" + ident + header + body + covered)
    payload += trailing
    aead = kdf.derive(key, kdf.WIRE) if signed else kdf.derive(SECRET, kdf.DATAGRAM_AEAD)
    return sealed + ChaCha20Poly1305(aead).encrypt(sealed[:12], payload, b"spa1 datagram" + sealed + bound)


def rewrap(packet: bytes, old: bytes, new: bytes, bound: bytes) -> bytes:
    """A signed datagram for the server of ``old`` re-wrapped for the server of ``new``."""
    header = compact.Obfuscator(old).decrypt_block(packet[:16])
    payload = ChaCha20Poly1305(kdf.derive(old, kdf.WIRE)).decrypt(packet[:12], packet[16:],
                                                                  b"spa1 datagram" + packet[:16] + bound)
    sealed = _aes(new, header)
    return sealed + ChaCha20Poly1305(kdf.derive(new, kdf.WIRE)).encrypt(sealed[:12], payload,
                                                                        b"spa1 datagram" + sealed + bound)


def _flip_last(label: str) -> str:
    """The same label with the lowest bit of its last character flipped (q <-> r)."""
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    return label[:-1] + alphabet[alphabet.index(label[-1]) ^ 1]


def _case(name: str, why: str, carrier: str, data: str, expect: str, *, source: str = "198.51.100.7",
          received: int = TIME, opens: list[str] | None = None, address: str | None = None) -> dict[str, Any]:
    """One knock: ``data`` is a DNS label (carrier dns) or a UDP payload in hex (carrier udp)."""
    case: dict[str, Any] = {"name": name, "why": why, "carrier": carrier, "input": data, "source": source,
                            "received": received, "expect": expect}
    if expect == "accepted":
        case["opens"] = {"address": address or source, "requests": opens or ["tcp/22"]}
    return case


SOURCE = bytes([198, 51, 100, 7])
MAPPED = ipaddress.ip_address("::ffff:198.51.100.7")


def _body(mode: int, requests: list[tuple[int, int]], address: bytes = b"", seconds: int = 0) -> bytes:
    return bytes([mode]) + address + seconds.to_bytes(2, "big") + bytes([len(requests)]) + b"".join(
        bytes([proto]) + port.to_bytes(2, "big") for proto, port in requests)


def gate_cases() -> list[dict[str, Any]]:
    """Knocks through the DNS and UDP decoders and the gate; expect is "accepted" or the refusal reason."""
    good = compact.seal_compact(compact.Obfuscator(OBFUSCATION_KEY), kdf.derive(SECRET, kdf.TOKEN_MAC),
                                KEY_ID, TIME, 0, ipaddress.ip_address("198.51.100.7"))
    label = encoding.to_label(good)
    ssh, rdp, wg = (6, 22), (6, 3389), (17, 51820)
    r = bytes([0xB0]) * 9
    cases = [
        _case("window edge, token 60 s ahead", "the window is inclusive: |skew| = window is inside",
              "dns", label, "accepted", received=TIME - WINDOW),
        _case("window edge, token 60 s behind", "the window is inclusive", "dns", label, "accepted",
              received=TIME + WINDOW),
        _case("61 s ahead", "one second past the window", "dns", label, "outside time window",
              received=TIME - WINDOW - 1),
        _case("61 s behind", "one second past the window", "dns", label, "outside time window",
              received=TIME + WINDOW + 1),
        _case("unused base32 bits set", "the last character's unused low bits must be zero (strict base32)",
              "dns", _flip_last(label), "malformed"),
        _case("compact token with mode 2", "mode 2 lives only inside extended tokens (MAC over the source here)",
              "dns", encoding.to_label(raw_compact(2, TIME, 0, SOURCE)), "malformed"),
        _case("extended token with inner mode 0", "the token inside an extended token has mode 2 "
              "(MAC over the carried address here)", "dns", encoding.to_label(raw_extended(0, SOURCE)), "malformed"),
        _case("extended token with inner mode 1", "the token inside an extended token has mode 2",
              "dns", encoding.to_label(raw_extended(1, b"")[:16] + bytes(4)), "malformed"),
        _case("extended token naming an IPv4-mapped address", "IPv4 hosts are named by 4 bytes; "
              "::ffff:a.b.c.d is refused, not unmapped (MAC over the 16 bytes here)",
              "dns", encoding.to_label(raw_extended(2, MAPPED.packed)), "malformed"),
        _case("compact token from an IPv4-mapped source", "a mapped source is refused like a mapped name",
              "dns", encoding.to_label(raw_compact(0, TIME, 0, MAPPED.packed)), "malformed", source=str(MAPPED)),
        _case("datagram, mode 1 opened with B = source", "the mode must match the B that opened the AEAD",
              "udp", raw_datagram(_body(1, [ssh]), SOURCE, r).hex(), "bad authenticator"),
        _case("datagram, mode 0 opened with B empty", "the mode must match the B that opened the AEAD",
              "udp", raw_datagram(_body(0, [ssh]), b"", r).hex(), "bad authenticator"),
        _case("datagram with a byte after the body", "the plaintext is exactly one body",
              "udp", raw_datagram(_body(0, [ssh]), SOURCE, r, trailing=b"\x00").hex(), "malformed"),
        _case("signed datagram with a byte after the signature", "the plaintext is exactly body | signature",
              "udp", raw_datagram(_body(0, [ssh]), SOURCE, r, signed=True, trailing=b"\x00").hex(), "malformed"),
        _case("datagram asking for a port outside the key's list", "every port asked must be in open; "
              "none is granted otherwise", "udp", raw_datagram(_body(0, [ssh, wg]), SOURCE, r).hex(),
              "refused by policy"),
        _case("datagram asking for a port twice", "each port at most once", "udp",
              raw_datagram(_body(0, [ssh, ssh]), SOURCE, r).hex(), "malformed"),
        _case("datagram naming an IPv4-mapped address", "IPv4 hosts are named by mode 4",
              "udp", raw_datagram(_body(6, [ssh], MAPPED.packed), b"", r).hex(), "malformed"),
        _case("signed datagram whose signature leaves out B", "the signature covers B", "udp",
              raw_datagram(_body(0, [ssh]), SOURCE, r, signed=True, sign_bound=b"").hex(), "bad authenticator"),
        _case("signed datagram whose signature leaves out I", "the signature covers the server id I", "udp",
              raw_datagram(_body(0, [ssh]), SOURCE, r, signed=True, server_id=b"").hex(), "bad authenticator"),
        _case("signed datagram re-wrapped from another server", "the same Ed25519 key on another server: "
              "whoever holds both O cannot move a datagram across", "udp",
              rewrap(raw_datagram(_body(0, [ssh]), SOURCE, r, signed=True, key=OTHER_SERVER_KEY),
                     OTHER_SERVER_KEY, OBFUSCATION_KEY, SOURCE).hex(), "bad authenticator"),
        _case("signed datagram, both ports", "a correct signed knock", "udp",
              raw_datagram(_body(0, [ssh, rdp]), SOURCE, r, signed=True).hex(), "accepted",
              opens=["tcp/22", "tcp/3389"]),
    ]
    emergency = otp.emergency_codes(EMERGENCY_SECRET, EMERGENCY_COUNT + 1)
    cases += [
        _case("emergency code, last live counter", f"counters 0-{EMERGENCY_COUNT - 1} are live",
              "dns", otp.to_label("alice", emergency[-2]), "accepted"),
        _case("emergency code past emergency_count", f"counter {EMERGENCY_COUNT} is not live",
              "dns", otp.to_label("alice", emergency[-1]), "wrong one-time code"),
        _case("emergency code from the TOTP secret", "emergency codes come from the emergency secret",
              "dns", otp.to_label("alice", otp.emergency_codes(TOTP_SECRET, 1)[0]), "wrong one-time code"),
    ]
    return cases


def code_labels() -> list[dict[str, Any]]:
    """Code labels naming IPv6 addresses: RFC 5952 text with - for :, and the longest that fits."""
    out = []
    for name, code, address in (("alice", "325812", "2001:db8:0:0:1:0:0:1"), ("alice", "325812", "2001:db8:0:1:1:1:1:1"),
                                ("alice", "325812", "2001:0DB8::0:7"),
                                ("abcdefghijkl", "1483702218", "fd12:3456:789a:bcde:f012:3456:789a:bcde")):
        text = otp.to_label(name, code, ipaddress.ip_address(address))
        out.append({"name": name, "code": code, "address": address, "dns_label": text, "length": len(text)})
    return out


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        PATH.write_text(render())
        print(f"wrote {PATH}")
    else:
        sys.stdout.write(render())
