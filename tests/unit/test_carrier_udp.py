"""The UDP carrier: SPA datagrams of plausible size become knocks the gate decides."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from makings import BOB_SEED, CLIENT, CLIENT6, NOW, OBFUSCATION_KEY, OTHER, RDP, SSH, make_bench

from spa.carriers import udp
from spa.core import datagram, kdf
from spa.core.events import Accepted, Carrier, Form, Reason, Rejection, Request


def test_datagram_bound_to_its_source_is_accepted() -> None:
    bench = make_bench()
    payload = bench.datagram(datagram.Body(datagram.Mode.SOURCE, (SSH, RDP), seconds=60), source=CLIENT)
    knock = udp.knock(payload, CLIENT, NOW)
    assert knock is not None
    assert (knock.carrier, knock.form, knock.payload, knock.source, knock.received) == (
        Carrier.UDP, Form.DATAGRAM, payload, CLIENT, NOW,
    )
    decision = bench.gate.decide(knock)
    assert isinstance(decision, Accepted)
    assert [(g.address, g.request, g.seconds) for g in decision.grants] == [(CLIENT, SSH, 60), (CLIENT, RDP, 60)]


def test_datagram_from_elsewhere_is_refused_by_the_gate() -> None:
    bench = make_bench()
    payload = bench.datagram(datagram.Body(datagram.Mode.SOURCE, (SSH,)), source=CLIENT)
    knock = udp.knock(payload, OTHER, NOW)
    assert knock is not None
    decision = bench.gate.decide(knock)
    assert isinstance(decision, Rejection) and decision.reason == Reason.BAD_MAC


def test_largest_datagram_signed_with_an_address_passes_the_size_check() -> None:
    bench = make_bench()
    body = datagram.Body(datagram.Mode.IPV6, tuple(Request("tcp", 1000 + i) for i in range(16)), address=CLIENT6)
    payload = datagram.seal(
        bench.obfuscator, 8, NOW, body,
        aead_key=kdf.derive(OBFUSCATION_KEY, kdf.WIRE),
        signing_key=Ed25519PrivateKey.from_private_bytes(BOB_SEED),
        server_id=kdf.derive(OBFUSCATION_KEY, kdf.SERVER_ID),
    )
    assert len(payload) == datagram.MAX_SIZE == udp.MAX_SIZE
    knock = udp.knock(payload, OTHER, NOW)
    assert knock is not None
    decision = bench.gate.decide(knock)
    # bob may open only tcp/22, so policy refuses: the point is that it got that far.
    assert isinstance(decision, Rejection) and decision.reason == Reason.POLICY


def test_smallest_datagram_is_exactly_the_minimum() -> None:
    bench = make_bench()
    payload = bench.datagram(datagram.Body(datagram.Mode.SOURCE, (SSH,)), source=CLIENT)
    assert len(payload) == udp.MIN_SIZE
    assert udp.knock(payload, CLIENT, NOW) is not None
    assert udp.knock(payload[:-1], CLIENT, NOW) is None


@pytest.mark.parametrize("size", [0, 1, 16, 38, 165, 512, 1400])
def test_implausible_sizes_are_dropped(size: int) -> None:
    assert udp.knock(os.urandom(size), CLIENT, NOW) is None


@given(st.binary(max_size=300))
def test_knock_exactly_when_the_size_fits(payload: bytes) -> None:
    knock = udp.knock(payload, CLIENT, NOW)
    assert (knock is not None) == (udp.MIN_SIZE <= len(payload) <= udp.MAX_SIZE)
    if knock is not None:
        decision = make_bench().gate.decide(knock)
        assert isinstance(decision, Rejection)  # random bytes never pass
