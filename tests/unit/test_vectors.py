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

from spa.core.events import Request

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
    hidden = bytes(a ^ b for a, b in zip(address, aes(O, token), strict=False))
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


# -- the gate section: every case through the real decoders and the real gate -------------


def vector_gate() -> Any:
    """The server the gate cases are written for: alice's key as in "keys", default settings."""
    from spa.core.gate import Gate
    from spa.core.keyring import Keyring
    from spa.core.keys import KeyRecord
    from spa.core.ledger import Ledger
    from spa.core.policy import Policy

    public = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(KEYS["signing_seed"])).public_key()
    record = KeyRecord(
        name=KEYS["name"], key_id=KEYS["key_id"], secret=S, public_key=public.public_bytes_raw(),
        policy=Policy(open=tuple(Request.parse(text) for text in KEYS["open"]), allow_unbound=True,
                      allow_codes=True),
        totp_secret=KEYS["totp_secret"], emergency_secret=KEYS["emergency_secret"],
        emergency_count=KEYS["emergency_count"],
    )
    return Gate(Keyring(O, [record]), Ledger(retention=700))


def outcome(case: dict[str, Any]) -> tuple[str, Any]:
    """What spa does with a gate case: ("accepted", grants) or (reason, None)."""
    from spa.carriers import dns, udp
    from spa.core.events import Accepted, Rejection

    source = ipaddress.ip_address(case["source"])
    if case["carrier"] == "dns":
        knock = dns.knock(case["input"], source, case["received"])
    else:
        knock = udp.knock(bytes.fromhex(case["input"]), source, case["received"])
    if knock is None:
        return "malformed", None  # the decoder refused it: not a knock at all
    decision = vector_gate().decide(knock)
    if isinstance(decision, Rejection):
        return decision.reason.value, None
    assert isinstance(decision, Accepted)
    return "accepted", decision.grants


@pytest.mark.parametrize("case", VECTORS["gate"], ids=[case["name"] for case in VECTORS["gate"]])
def test_gate_cases_against_the_real_decoders_and_gate(case: dict[str, Any]) -> None:
    result, grants = outcome(case)
    assert result == case["expect"], case["why"]
    if grants is not None:
        assert {str(g.address) for g in grants} == {case["opens"]["address"]}
        assert [str(g.request) for g in grants] == case["opens"]["requests"]


def test_every_gate_refusal_says_why() -> None:
    refusals = [case for case in VECTORS["gate"] if case["expect"] != "accepted"]
    assert len(refusals) >= 15 and all(case["why"] for case in refusals)


# -- misreadings of the spec: each gives a result the vectors contradict ---------------------


def gate_case(name: str) -> dict[str, Any]:
    return next(case for case in VECTORS["gate"] if case["name"] == name)


def _signed_parts(packet: bytes, bound: bytes, key: bytes = O) -> tuple[bytes, bytes, bytes]:
    """(h, body, signature) of a signed datagram, opened with raw primitives."""
    header = aes(key, packet[:16], decrypt=True)
    wire = h(key, b"spa1 datagram wire")
    payload = ChaCha20Poly1305(wire).decrypt(packet[:12], packet[16:], b"spa1 datagram" + packet[:16] + bound)
    return header, payload[:-64], payload[-64:]


def _public() -> Any:
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(KEYS["signing_seed"])).public_key()


def test_misreading_signature_without_b_fails_a_vector() -> None:
    from cryptography.exceptions import InvalidSignature

    case = next(c for c in VECTORS["datagram"] if c["kind"] == "signed" and c["mode"] == "source")
    bound = packed(case["packet_source"])
    header, body, signature = _signed_parts(bytes.fromhex(case["datagram"]), bound)
    server_id = bytes.fromhex(KEYS["server_id"])
    with pytest.raises(InvalidSignature):  # a server leaving B out refuses this valid vector
        _public().verify(signature, b"spa1 datagram sig" + server_id + header + body)
    bad = gate_case("signed datagram whose signature leaves out B")
    header, body, signature = _signed_parts(bytes.fromhex(bad["input"]), bound)
    _public().verify(signature, b"spa1 datagram sig" + server_id + header + body)  # ... and accepts this one
    assert bad["expect"] == "bad authenticator"


def test_misreading_signature_without_server_id_accepts_a_rewrapped_datagram() -> None:
    case = gate_case("signed datagram re-wrapped from another server")
    bound = packed(case["source"])
    header, body, signature = _signed_parts(bytes.fromhex(case["input"]), bound)
    other = h(bytes.fromhex(KEYS["other_server_obfuscation_key"]), b"spa1 server id")
    _public().verify(signature, b"spa1 datagram sig" + other + header + body + bound)  # valid... for the other server
    assert case["expect"] == "bad authenticator"


def _sequence_misread(case: dict[str, Any], skip_duplicates: bool, blocks: int) -> list[int]:
    span = case["high"] - case["low"] + 1
    ports: list[int] = []
    for block in range(blocks):
        message = b"spa1 sequence" + case["step"].to_bytes(8, "big") + bytes([case["request_index"], block])
        digest = h(bytes.fromhex(KEYS["sequence_key"]), message)
        for i in range(0, 32, 2):
            draw = int.from_bytes(digest[i : i + 2], "big")
            port = case["low"] + draw % span
            if draw < 65536 - 65536 % span and (port not in ports or not skip_duplicates):
                ports.append(port)
    return ports[: case["length"]]


def test_misreading_sequences_fails_a_vector() -> None:
    narrow, wide = VECTORS["sequence"][-2:]
    assert _sequence_misread(narrow, skip_duplicates=False, blocks=4) != narrow["ports"]
    assert _sequence_misread(wide, skip_duplicates=True, blocks=1) != wide["ports"]  # one block is too few
    for case in (narrow, wide):  # the right reading, for contrast
        assert _sequence_misread(case, skip_duplicates=True, blocks=4) == case["ports"]


def test_misreading_emergency_codes_from_the_totp_secret_fails_a_vector() -> None:
    assert KEYS["emergency_secret"] != KEYS["totp_secret"]
    for case in VECTORS["emergency"]:
        assert pyotp.HOTP(KEYS["totp_secret"], digits=10).at(case["counter"]) != case["code"]
    assert gate_case("emergency code from the TOTP secret")["expect"] == "wrong one-time code"


def test_misreading_lax_base32_accepts_a_refused_label() -> None:
    from spa.core import encoding

    case = gate_case("unused base32 bits set")
    text = case["input"]
    lax = base64.b32decode(text.upper() + "=" * (-len(text) % 8))
    good = bytes.fromhex(VECTORS["compact"][0]["token"])
    assert lax == good and text != VECTORS["compact"][0]["dns_label"]  # a lax decoder reads the good token
    assert encoding.from_label(text) is None and case["expect"] == "malformed"  # ours refuses it


def test_misreading_mapped_addresses_accepts_a_refused_token() -> None:
    """Without the rule, the MAC over the 16 mapped bytes checks out and policy sees IPv6."""
    case = gate_case("extended token naming an IPv4-mapped address")
    data = base64.b32decode(case["input"].upper() + "=" * (-len(case["input"]) % 8))
    plain = aes(O, data[:16], decrypt=True)
    address = bytes(a ^ b for a, b in zip(data[16:], aes(O, data[:16]), strict=False))
    assert ipaddress.ip_address(address).ipv4_mapped is not None
    assert h(bytes.fromhex(KEYS["mac_key"]), b"spa1 compact" + plain[:8] + address)[:8] == plain[8:]
    assert case["expect"] == "malformed"


def _label_bytes(text: str) -> bytes:
    return base64.b32decode(text.upper() + "=" * (-len(text) % 8))


@pytest.mark.parametrize(("name", "mode", "covered"), [
    ("compact token with mode 2", 2, "source"),
    ("extended token with inner mode 0", 0, "carried"),
])
def test_misreading_modes_accepts_a_refused_token(name: str, mode: int, covered: str) -> None:
    """A server that does not tie modes to forms finds a good MAC on these."""
    case = gate_case(name)
    data = _label_bytes(case["input"])
    plain = aes(O, data[:16], decrypt=True)
    assert plain[0] == 0x10 | mode
    address = packed(case["source"]) if covered == "source" else bytes(
        a ^ b for a, b in zip(data[16:], aes(O, data[:16]), strict=False))
    assert h(bytes.fromhex(KEYS["mac_key"]), b"spa1 compact" + plain[:8] + address)[:8] == plain[8:]
    assert case["expect"] == "malformed"


def _open_aead(case: dict[str, Any], bound: bytes) -> bytes:
    packet = bytes.fromhex(case["input"])
    key = h(S, b"spa1 datagram aead")
    return ChaCha20Poly1305(key).decrypt(packet[:12], packet[16:], b"spa1 datagram" + packet[:16] + bound)


def test_misreading_mode_and_b_accepts_a_refused_datagram() -> None:
    case = gate_case("datagram, mode 1 opened with B = source")
    assert _open_aead(case, packed(case["source"]))[0] == 1  # opens with B = source, yet says unbound
    case = gate_case("datagram, mode 0 opened with B empty")
    assert _open_aead(case, b"")[0] == 0
    assert case["expect"] == "bad authenticator"


def test_misreading_trailing_bytes_accepts_a_refused_datagram() -> None:
    from spa.core import datagram

    case = gate_case("datagram with a byte after the body")
    payload = _open_aead(case, packed(case["source"]))
    parsed = datagram.decode_body(payload)
    assert parsed is not None and parsed[1] == len(payload) - 1  # a good body, and one byte more
    assert case["expect"] == "malformed"


def test_misreading_an_exclusive_window_refuses_accepted_vectors() -> None:
    edges = [c for c in VECTORS["gate"] if c["name"].startswith("window edge")]
    for case in edges:
        token_time = int.from_bytes(aes(O, _label_bytes(case["input"]), decrypt=True)[3:7], "big")
        assert abs(token_time - case["received"]) == 60 and case["expect"] == "accepted"


def test_code_labels_write_ipv6_in_rfc5952_form_and_fit_one_label() -> None:
    for case in VECTORS["code_labels"]:
        address = ipaddress.ip_address(case["address"])
        expected = f"{case['name']}-{case['code']}-" + address.compressed.replace(":", "-")
        assert case["dns_label"] == expected and len(expected) == case["length"] <= 63
    for case in VECTORS["code_labels"][:3]:  # the full or the as-given form would differ
        address = ipaddress.ip_address(case["address"])
        assert case["dns_label"] != f"{case['name']}-{case['code']}-" + address.exploded.replace(":", "-")
    given = VECTORS["code_labels"][2]  # written 2001:0DB8::0:7, labelled in its one RFC 5952 form
    assert given["dns_label"] != f"{given['name']}-{given['code']}-" + given["address"].replace(":", "-")
    assert max(case["length"] for case in VECTORS["code_labels"]) == 63  # 12-character name, 10 digits, 39
    assert VECTORS["code_labels"][0]["dns_label"].endswith("2001-db8--1-0-0-1")  # the first longest run
    assert VECTORS["code_labels"][1]["dns_label"].endswith("2001-db8-0-1-1-1-1-1")  # no :: for one zero group


def test_a_signed_datagram_asks_only_for_ports_in_the_keys_list() -> None:
    allowed = set(KEYS["open"])
    assert all(set(case["requests"]) <= allowed for case in VECTORS["datagram"])
    assert gate_case("datagram asking for a port outside the key's list")["expect"] == "refused by policy"
