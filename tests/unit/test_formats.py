"""Token formats: encodings, compact/extended tokens, datagrams, codes, sequences."""

from __future__ import annotations

import ipaddress

import pyotp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from makings import CLIENT, CLIENT6, NOW, OBFUSCATION_KEY, RDP, SSH

from spa.core import compact, datagram, encoding, otp, sequence
from spa.core.compact import AddressMode, Obfuscator
from spa.core.events import OtpCode, Request

OBF = Obfuscator(OBFUSCATION_KEY)
MAC_KEY = bytes(32)

addresses = st.one_of(
    st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1)),
    st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1)),
)


@given(st.binary(max_size=39))
def test_label_round_trips_in_any_case(data: bytes) -> None:
    label = encoding.to_label(data)
    assert label == label.lower() and len(label) <= 63
    assert encoding.from_label(label) == data
    assert encoding.from_label(label.upper()) == data


@pytest.mark.parametrize("label", ["a", "abc", "abcdef", "0" * 26, "a" * 64, "ab-d"])
def test_label_that_no_bytes_encode_to_is_refused(label: str) -> None:
    assert encoding.from_label(label) is None


def test_label_with_nonzero_trailing_bits_is_refused() -> None:
    assert encoding.from_label("ae") == b"\x01"  # one byte: 8 of 10 bits used, 2 spare zeros
    assert encoding.from_label("af") is None  # same byte, a spare bit set


def test_label_sizes_per_form() -> None:
    mac = MAC_KEY
    assert len(encoding.to_label(compact.seal_compact(OBF, mac, 1, NOW, 0, CLIENT))) == 26
    assert len(encoding.to_label(compact.seal_extended(OBF, mac, 1, NOW, 0, CLIENT))) == 32
    assert len(encoding.to_label(compact.seal_extended(OBF, mac, 1, NOW, 0, CLIENT6))) == 52


@given(st.integers(1, 0xFFFF), st.integers(0, 2**32 - 1), st.integers(0, 255), addresses)
def test_compact_round_trip(key_id: int, time: int, index: int, address: ipaddress.IPv4Address) -> None:
    token = compact.seal_compact(OBF, MAC_KEY, key_id, time, index, address)
    assert len(token) == 16 and encoding.to_pattern(token) == token.hex()
    opened = compact.open_block(OBF, token)
    assert opened is not None
    fields, plain = opened
    assert fields == compact.Fields(AddressMode.SOURCE, key_id, time, index)
    assert compact.mac_matches(MAC_KEY, plain, address)
    assert not compact.mac_matches(MAC_KEY, plain, None)


@given(addresses)
def test_extended_round_trip_hides_the_address(address: ipaddress.IPv4Address) -> None:
    data = compact.seal_extended(OBF, MAC_KEY, 9, NOW, 1, address)
    assert len(data) == 16 + len(address.packed)
    assert compact.unmask_address(OBF, data) == address
    fields, plain = compact.open_block(OBF, data[:16])  # type: ignore[misc]
    assert fields.mode == AddressMode.EXPLICIT and compact.mac_matches(MAC_KEY, plain, address)


def test_compact_refuses_out_of_range_fields() -> None:
    for key_id, time, index in ((0, NOW, 0), (65536, NOW, 0), (1, -1, 0), (1, 2**32, 0), (1, NOW, 256)):
        with pytest.raises(ValueError):
            compact.seal_compact(OBF, MAC_KEY, key_id, time, index, CLIENT)


def test_tokens_look_random_no_fixed_bytes() -> None:
    tokens = [compact.seal_compact(OBF, MAC_KEY, 1, NOW + i, 0, CLIENT) for i in range(64)]
    for position in range(16):
        assert len({t[position] for t in tokens}) > 16, position


# -- datagrams --------------------------------------------------------------

bodies = st.builds(
    datagram.Body,
    mode=st.just(datagram.Mode.UNBOUND),
    requests=st.lists(st.builds(Request, st.sampled_from(["tcp", "udp"]), st.integers(1, 65535)),
                      min_size=1, max_size=16, unique=True).map(tuple),
    seconds=st.integers(0, 0xFFFF),
)


@given(bodies)
def test_datagram_body_round_trip(body: datagram.Body) -> None:
    encoded = datagram.encode_body(body)
    assert datagram.decode_body(encoded) == (body, len(encoded))


@given(st.binary(max_size=80))
def test_datagram_body_decoder_never_raises(data: bytes) -> None:
    datagram.decode_body(data)


def test_datagram_header_and_size() -> None:
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    body = datagram.Body(datagram.Mode.IPV6, tuple(Request("tcp", 22 + n) for n in range(16)), 60, CLIENT6)
    packet = datagram.seal(OBF, 3, NOW, body, aead_key=MAC_KEY, random=bytes(9))
    header = datagram.open_header(OBF, packet)
    assert header is not None and (header.kind, header.key_id, header.time) == (datagram.Kind.AEAD, 3, NOW)
    assert datagram.open_body(header, packet, ChaCha20Poly1305(MAC_KEY), CLIENT) == body
    assert len(packet) <= datagram.MAX_SIZE


def test_datagram_refuses_inconsistent_requests() -> None:
    with pytest.raises(ValueError):
        datagram.seal(OBF, 3, NOW, datagram.Body(datagram.Mode.SOURCE, (SSH,)), aead_key=MAC_KEY)
    with pytest.raises(ValueError):
        datagram.encode_body(datagram.Body(datagram.Mode.IPV4, (SSH,), 0, CLIENT6))
    with pytest.raises(ValueError):
        datagram.encode_body(datagram.Body(datagram.Mode.UNBOUND, ()))
    with pytest.raises(ValueError, match="at most once"):
        datagram.encode_body(datagram.Body(datagram.Mode.UNBOUND, (SSH, SSH)))


def test_a_body_asking_for_a_port_twice_does_not_decode() -> None:
    """One meaning per body (docs/protocol.md): a repeated port is malformed, not merged."""
    once = datagram.encode_body(datagram.Body(datagram.Mode.UNBOUND, (SSH, RDP)))
    twice = once[:3] + bytes([2]) + once[4:7] * 2
    assert datagram.decode_body(once) is not None
    assert datagram.decode_body(twice) is None


# -- one-time codes ---------------------------------------------------------


def test_otp_label_forms() -> None:
    assert otp.parse_label("alice-492039") == OtpCode("alice", "492039")
    assert otp.parse_label("ALICE-492039") == OtpCode("alice", "492039")
    assert otp.parse_label("alice-49203912-198-51-100-7") == OtpCode("alice", "49203912", CLIENT)
    assert otp.parse_label("alice-492039-2001-db8--7") == OtpCode("alice", "492039", CLIENT6)
    assert otp.parse_label("alice-1234567890") == OtpCode("alice", "1234567890")
    for bad in ("alice", "alice-49203", "alice-4920391", "1lice-492039", "alice-492039-999-1-1-1",
                "alice-49a039", "-492039", "alice-492039-zz"):
        assert otp.parse_label(bad) is None, bad


@given(st.integers(1, 0xFFFF), st.sampled_from([6, 8, 10]), st.data())
def test_otp_pattern_round_trip(key_id: int, length: int, data: st.DataObject) -> None:
    digits = data.draw(st.text("0123456789", min_size=length, max_size=length))
    pattern = otp.to_pattern(key_id, digits)
    assert len(pattern) == 4 + length
    assert otp.parse_pattern(bytes.fromhex(pattern)) == OtpCode(key_id, digits)


@given(addresses, st.text("0123456789", min_size=6, max_size=6))
def test_otp_label_round_trip(address: ipaddress.IPv4Address, digits: str) -> None:
    label = otp.to_label("alice", digits, address)
    assert len(label) <= 63
    assert otp.parse_label(label) == OtpCode("alice", digits, address)


_label_text = st.one_of(
    st.text(max_size=70),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-%:.", max_size=64),
    st.builds(lambda name, digits, rest: f"{name}-{digits}{rest}", st.sampled_from(["alice", "a", "A1", "1a"]),
              st.text("0123456789", min_size=5, max_size=11), st.text(alphabet="0123456789abcdef-%:.", max_size=40)),
)


@settings(max_examples=1000)
@given(_label_text)
def test_otp_label_parser_gives_a_code_or_none(label: str) -> None:
    code = otp.parse_label(label)
    if code is not None:
        # Whatever it reads, it reads the same back from the label it would write.
        assert isinstance(code.who, str) and otp.parse_label(otp.to_label(code.who, code.digits, code.address)) == code
        assert code.address is None or getattr(code.address, "scope_id", None) is None


def test_otp_label_refuses_a_scoped_address() -> None:
    # Regression: "fe80--1%eth0" parsed as fe80::1 scoped to eth0, free text in an address.
    assert otp.parse_label("alice-492039-fe80--1%eth0") is None
    assert otp.parse_label("alice-492039-fe80--1") == OtpCode("alice", "492039", ipaddress.ip_address("fe80::1"))


@given(st.binary(max_size=20))
def test_otp_pattern_parser_gives_a_code_or_none(pattern: bytes) -> None:
    code = otp.parse_pattern(pattern)
    assert code is None or bytes.fromhex(otp.to_pattern(code.who, code.digits)) == pattern  # type: ignore[arg-type]


@settings(max_examples=500)
@given(st.one_of(st.text(max_size=70), st.text(alphabet="abcdefghijklmnopqrstuvwxyz234567ABZ01=", max_size=64)))
def test_label_decoder_gives_bytes_or_none(label: str) -> None:
    data = encoding.from_label(label)
    assert data is None or encoding.to_label(data) == label.lower()


@given(st.binary(max_size=40))
def test_compact_open_block_gives_fields_or_none(token: bytes) -> None:
    opened = compact.open_block(OBF, token)
    if opened is not None:
        fields, plain = opened
        assert len(token) == 16 and fields.mode <= AddressMode.EXPLICIT and len(plain) == 16


@given(st.binary(max_size=200))
def test_datagram_header_opener_gives_a_header_or_none(data: bytes) -> None:
    header = datagram.open_header(OBF, data)
    assert header is None or (header.kind in datagram.Kind and header.sealed == data[:16])


def test_otp_pattern_refuses_non_codes() -> None:
    assert otp.parse_pattern(bytes.fromhex("0007abcdef")) is None  # not decimal digits
    assert otp.parse_pattern(bytes.fromhex("0000492039")) is None  # key id 0
    assert otp.parse_pattern(bytes(16)) is None


def test_totp_matches_what_an_authenticator_app_shows() -> None:
    secret = otp.new_secret()
    app = pyotp.TOTP(secret)
    assert otp.totp_matches(secret, app.at(NOW), NOW // 30)
    assert not otp.totp_matches(secret, app.at(NOW), NOW // 30 + 1)
    uri = otp.otpauth_uri(secret, "alice", "spa host")
    assert uri.startswith("otpauth://totp/") and secret in uri


def test_emergency_codes_are_ten_digits_and_distinct() -> None:
    codes = otp.emergency_codes(otp.new_secret(), 20)
    assert len(set(codes)) == 20 and all(len(c) == 10 and c.isdigit() for c in codes)


# -- sequences ---------------------------------------------------------------


def test_sequence_ports_are_distinct_in_range_and_change_every_step() -> None:
    rule = sequence.SequenceRule(length=4, low=40000, high=40019, step_seconds=30)
    seen = set()
    for step in range(200):
        ports = sequence.ports(MAC_KEY, step, 0, rule)
        assert len(ports) == 4 and len(set(ports)) == 4
        assert all(40000 <= p <= 40019 for p in ports)
        seen.add(ports)
    assert len(seen) > 190
    assert sequence.ports(MAC_KEY, 5, 0, rule) == sequence.ports(MAC_KEY, 5, 0, rule)
    assert sequence.ports(MAC_KEY, 5, 0, rule) != sequence.ports(MAC_KEY, 5, 1, rule)


def test_sequence_rule_validation() -> None:
    with pytest.raises(ValueError):
        sequence.SequenceRule(length=1)
    with pytest.raises(ValueError):
        sequence.SequenceRule(low=100, high=105)
