"""The ICMP carrier: echo data laid out as each ping writes it, to knocks the gate accepts."""

from __future__ import annotations

import dataclasses
import os
import struct

import pyotp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from makings import CLIENT, CLIENT6, EMERGENCY_SECRET, NOW, OBFUSCATION_KEY, SSH, TOTP_SECRET, alice_record, make_bench
from scapy.layers.inet import ICMP
from scapy.layers.inet6 import ICMPv6EchoRequest
from scapy.packet import Raw

from spa.carriers import icmp
from spa.core import otp
from spa.core.events import Accepted, Carrier, Decision, Duplicate, Form, Knock, OtpCode, Reason, Rejection
from spa.core.gate import Gate
from spa.core.keyring import Keyring
from spa.core.ledger import Ledger

SIZES = (32, 40, 56, 64, 100)
LAYOUTS = ("linux", "bsd")


def ping_data(pattern: bytes, size: int, layout: str, sent: float = NOW + 0.123456) -> bytes:
    """Echo data as `ping -p <pattern hex> -s <size>` writes it (after the ICMP header).

    linux (iputils, inetutils, Android): struct timeval (two little-endian
    64-bit fields) at data[0:16], then data[k] = pattern[k mod len].
    bsd (FreeBSD, macOS): struct tv32 (two big-endian 32-bit fields) at
    data[0:8], then data[k] = pattern[(k - 8) mod len].
    """
    assert 1 <= len(pattern) <= 16 and size >= 16
    seconds, fraction = int(sent), sent - int(sent)
    if layout == "linux":
        start, stamp = 16, struct.pack("<qq", seconds, int(fraction * 1e6))
        fill = bytes(pattern[k % len(pattern)] for k in range(start, size))
    elif layout == "bsd":
        start, stamp = 8, struct.pack(">II", seconds, int(fraction * 1e9))
        fill = bytes(pattern[(k - 8) % len(pattern)] for k in range(start, size))
    else:
        raise ValueError(layout)
    return stamp + fill


def test_ping_data_matches_the_documented_layouts() -> None:
    pattern = bytes(range(0xA0, 0xB0))
    linux = ping_data(pattern, 48, "linux")
    bsd = ping_data(pattern, 48, "bsd")
    assert len(linux) == len(bsd) == 48
    assert linux[16:32] == pattern and linux[32:48] == pattern
    assert bsd[8:24] == pattern and bsd[16:32] == pattern[8:] + pattern[:8]


def first_accepted(gate: Gate, candidates: tuple[Knock, ...]) -> tuple[int, Decision]:
    """What the daemon does: try candidates in order, stop at the first non-Rejection."""
    decision: Decision | None = None
    for index, knock in enumerate(candidates):
        decision = gate.decide(knock)
        if not isinstance(decision, Rejection):
            return index, decision
    assert decision is not None, "no candidates"
    return -1, decision


# -- compact tokens ----------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("size", SIZES)
def test_compact_token_in_every_layout_and_size_is_the_first_candidate(layout: str, size: int) -> None:
    bench = make_bench()
    token = bench.compact()
    candidates = icmp.knocks(ping_data(token, size, layout), CLIENT, NOW)
    assert [k.form for k in candidates] == [Form.COMPACT, Form.COMPACT]
    assert all(k.carrier == Carrier.ICMP and k.source == CLIENT and k.received == NOW for k in candidates)
    assert candidates[0].payload == token
    index, decision = first_accepted(bench.gate, candidates)
    assert index == 0 and isinstance(decision, Accepted)
    assert [(g.address, g.request) for g in decision.grants] == [(CLIENT, SSH)]
    # The other phase reads the token rotated by 8 bytes: junk to the gate.
    wrong = bench.gate.decide(candidates[1])
    assert isinstance(wrong, Rejection) and wrong.reason == Reason.MALFORMED


@pytest.mark.parametrize("layout", LAYOUTS)
def test_pings_second_packet_is_a_duplicate(layout: str) -> None:
    bench = make_bench()
    token = bench.compact()
    assert isinstance(first_accepted(bench.gate, icmp.knocks(ping_data(token, 56, layout), CLIENT, NOW))[1], Accepted)
    again = icmp.knocks(ping_data(token, 56, layout, sent=NOW + 1.2), CLIENT, NOW + 1)
    assert isinstance(first_accepted(bench.gate, again)[1], Duplicate)


def test_token_bound_to_another_address_is_refused() -> None:
    bench = make_bench()
    candidates = icmp.knocks(ping_data(bench.compact(address=CLIENT6), 56, "linux"), CLIENT, NOW)
    index, decision = first_accepted(bench.gate, candidates)
    assert index == -1 and isinstance(decision, Rejection)


# -- one-time codes ----------------------------------------------------------


def totp_now(digits: int = 6) -> str:
    return pyotp.TOTP(TOTP_SECRET, digits=digits).at(NOW)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("size", SIZES)
def test_totp_pattern_in_every_layout_and_size(layout: str, size: int) -> None:
    bench = make_bench()
    code = totp_now()
    pattern = bytes.fromhex(otp.to_pattern(7, code))
    assert len(pattern) == 5
    candidates = icmp.knocks(ping_data(pattern, size, layout), CLIENT, NOW)
    assert 1 <= len(candidates) <= 4
    assert candidates[0].form == Form.OTP and candidates[0].payload == OtpCode(7, code)
    assert {k.form for k in candidates} <= {Form.OTP, Form.COMPACT}
    index, decision = first_accepted(bench.gate, candidates)
    assert index == 0 and isinstance(decision, Accepted)
    assert [(g.address, g.request) for g in decision.grants] == [(CLIENT, SSH)]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_eight_digit_totp_pattern(layout: str) -> None:
    record = dataclasses.replace(alice_record(), totp_digits=8)
    gate = Gate(Keyring(OBFUSCATION_KEY, [record]), Ledger(retention=660))
    code = totp_now(8)
    pattern = bytes.fromhex(otp.to_pattern(7, code))
    assert len(pattern) == 6
    candidates = icmp.knocks(ping_data(pattern, 56, layout), CLIENT, NOW)
    assert candidates[0].payload == OtpCode(7, code)
    assert isinstance(first_accepted(gate, candidates)[1], Accepted)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("size", (32, 64))
def test_emergency_code_pattern(layout: str, size: int) -> None:
    bench = make_bench()
    code = otp.emergency_codes(EMERGENCY_SECRET, 5)[2]
    pattern = bytes.fromhex(otp.to_pattern(7, code))
    assert len(pattern) == 7
    candidates = icmp.knocks(ping_data(pattern, size, layout), CLIENT, NOW)
    assert candidates[0].payload == OtpCode(7, code)
    assert isinstance(first_accepted(bench.gate, candidates)[1], Accepted)


def test_wrong_code_is_offered_and_refused() -> None:
    bench = make_bench()
    wrong = "000000" if totp_now() != "000000" else "111111"
    candidates = icmp.knocks(ping_data(bytes.fromhex(otp.to_pattern(7, wrong)), 56, "linux"), CLIENT, NOW)
    assert candidates[0].payload == OtpCode(7, wrong)
    decision = bench.gate.decide(candidates[0])
    assert isinstance(decision, Rejection) and decision.reason == Reason.BAD_CODE


@pytest.mark.parametrize(
    "pattern",
    [
        # Both phases are read, so no rotation may parse either.
        b"\x00\x00\x00\x00\x00",  # key id 0 however it is rotated
        b"\x00\x07\xab\x34\xcd",  # every 3-byte window holds a hex digit that is not decimal
        b"\xff\xff\xff\xff\xff",  # one byte repeated: every period fits, nothing parses
        b"\x00\x07\x12\x34",  # 4 bytes: no code has that size
    ],
)
def test_repeating_patterns_that_do_not_parse_give_no_code(pattern: bytes) -> None:
    for layout in LAYOUTS:
        candidates = icmp.knocks(ping_data(pattern, 56, layout), CLIENT, NOW)
        assert candidates and all(k.form == Form.COMPACT for k in candidates)


def test_plain_ping_gives_only_compact_candidates() -> None:
    # iputils without -p: data[k] = k & 0xff, the first 16 bytes then overwritten by the timestamp.
    data = struct.pack("<qq", NOW, 123456) + bytes(range(16, 56))
    candidates = icmp.knocks(data, CLIENT, NOW)
    assert [k.form for k in candidates] == [Form.COMPACT, Form.COMPACT]
    assert candidates[0].payload == bytes(range(16, 32))
    decision = make_bench().gate.decide(candidates[0])
    assert isinstance(decision, Rejection) and decision.reason == Reason.MALFORMED


def test_one_byte_fill_offers_one_code_and_one_token() -> None:
    # Constant data repeats with every period; only the shortest code is offered,
    # and both phases read the same, so nothing is offered twice.
    candidates = icmp.knocks(bytes([0x11]) * 64, CLIENT, NOW)
    assert [k.payload for k in candidates] == [OtpCode(0x1111, "111111"), bytes([0x11]) * 16]


@pytest.mark.parametrize("size", (0, 1, 16, 24, 31))
def test_too_short_for_a_token(size: int) -> None:
    assert icmp.knocks(os.urandom(size), CLIENT, NOW) == ()


def test_memoryview_input() -> None:
    bench = make_bench()
    token = bench.compact()
    candidates = icmp.knocks(memoryview(bytearray(ping_data(token, 56, "linux"))), CLIENT, NOW)  # type: ignore[arg-type]
    assert candidates[0].payload == token and type(candidates[0].payload) is bytes


def test_windows_powershell_buffer_in_the_linux_layout() -> None:
    # .NET Ping.Send sends the buffer as is: zeros where ping puts its timestamp.
    bench = make_bench()
    token = bench.compact()
    code = totp_now()
    for pattern, payload in ((token, token), (bytes.fromhex(otp.to_pattern(7, code)), OtpCode(7, code))):
        buffer = bytes(16) + bytes(pattern[k % len(pattern)] for k in range(16, 48))
        candidates = icmp.knocks(buffer, CLIENT, NOW)
        assert candidates[0].payload == payload
        index, decision = first_accepted(bench.gate, candidates)
        assert index == 0 and isinstance(decision, Accepted)


# -- packets built by scapy --------------------------------------------------


def test_freebsd_echo_request_built_by_scapy() -> None:
    bench = make_bench()
    token = bench.compact()
    packet = bytes(ICMP(type=8, id=0x4D2, seq=0) / Raw(ping_data(token, 56, "bsd")))
    assert packet[0] == 8 and len(packet) == 8 + 56
    candidates = icmp.knocks(packet[8:], CLIENT, NOW)  # what the daemon passes: data after the header
    index, decision = first_accepted(bench.gate, candidates)
    assert index == 0 and isinstance(decision, Accepted)


def test_icmpv6_echo_request_built_by_scapy() -> None:
    bench = make_bench()
    token = bench.compact(address=CLIENT6)
    packet = bytes(ICMPv6EchoRequest(id=7, seq=1, data=ping_data(token, 56, "linux")))
    assert packet[0] == 128 and len(packet) == 8 + 56
    index, decision = first_accepted(bench.gate, icmp.knocks(packet[8:], CLIENT6, NOW))
    assert index == 0 and isinstance(decision, Accepted) and decision.grants[0].address == CLIENT6


# -- properties --------------------------------------------------------------


@given(st.binary(max_size=400))
def test_never_raises_and_offers_at_most_four(data: bytes) -> None:
    candidates = icmp.knocks(data, CLIENT, NOW)
    assert len(candidates) <= icmp.MAX_CANDIDATES
    assert (len(candidates) == 0) == (len(data) < 32)
    for knock in candidates:
        assert knock.carrier == Carrier.ICMP
        if knock.form == Form.COMPACT:
            assert isinstance(knock.payload, bytes) and len(knock.payload) == 16
        else:
            assert knock.form == Form.OTP and isinstance(knock.payload, OtpCode)


@given(
    st.binary(min_size=1, max_size=16),
    st.integers(min_value=32, max_value=300),
    st.sampled_from(LAYOUTS),
    st.floats(min_value=0, max_value=2**32 - 1, allow_nan=False),
)
def test_any_ping_layout_is_read_back(pattern: bytes, size: int, layout: str, sent: float) -> None:
    candidates = icmp.knocks(ping_data(pattern, size, layout, sent), CLIENT, NOW)
    assert 1 <= len(candidates) <= icmp.MAX_CANDIDATES
    if len(pattern) == 16:
        assert any(k.payload == pattern for k in candidates)
    code = otp.parse_pattern(pattern)
    if code is not None and len(set(pattern)) > 1:
        assert any(k.payload == code for k in candidates)
