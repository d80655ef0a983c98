"""The sequence carrier: per-source progress through fixed and one-time port sequences."""

from __future__ import annotations

import ipaddress
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from makings import CLIENT, NOW, OBFUSCATION_KEY, OTHER, RDP, SSH, alice_record, make_bench

from spa.carriers.sequence import Tracker
from spa.core.events import Accepted, Carrier, Form, Knock, Request, SequenceHit, StaticHit
from spa.core.gate import Gate
from spa.core.keyring import Keyring
from spa.core.ledger import Ledger
from spa.core.policy import Policy
from spa.core.sequence import SequenceRule, StaticSequence, knock_ports

A, B, C = Request("tcp", 7000), Request("tcp", 8000), Request("udp", 9000)
DOOR = StaticSequence("door", (A, B, C), Policy(open=(SSH,)), timeout=5.0)


def run(tracker: Tracker, hits: list[tuple[Request, float]], source: ipaddress.IPv4Address = CLIENT) -> list[Knock]:
    """Feed hits from one source; every knock they complete, in order."""
    found: list[Knock] = []
    for request, at in hits:
        found += tracker.hit(source, request, at)
    return found


def door_knock(at: float, source: ipaddress.IPv4Address = CLIENT) -> Knock:
    return Knock(Carrier.SEQUENCE, Form.STATIC, StaticHit("door"), source, at)


# -- fixed sequences ---------------------------------------------------------


def test_in_order_completes_on_the_last_port() -> None:
    tracker = Tracker((DOOR,))
    assert tracker.hit(CLIENT, A, NOW) == []
    assert tracker.hit(CLIENT, B, NOW + 1) == []
    assert tracker.hit(CLIENT, C, NOW + 2) == [door_knock(NOW + 2)]


def test_protocol_is_part_of_a_fixed_step() -> None:
    tracker = Tracker((DOOR,))
    assert run(tracker, [(A, NOW), (B, NOW), (Request("tcp", 9000), NOW)]) == []


def test_duplicates_never_break_a_sequence() -> None:
    tracker = Tracker((DOOR,))
    hits = [(A, NOW), (A, NOW + 1), (A, NOW + 3), (B, NOW + 3.5), (B, NOW + 3.6), (C, NOW + 4)]
    assert run(tracker, hits) == [door_knock(NOW + 4)]


def test_a_completed_sequence_is_forgotten() -> None:
    tracker = Tracker((DOOR,))
    assert run(tracker, [(A, NOW), (B, NOW), (C, NOW)]) == [door_knock(NOW)]
    # A retransmitted last SYN after completion does not complete it again...
    assert tracker.hit(CLIENT, C, NOW + 1) == []
    # ...and the next full sequence completes again.
    assert run(tracker, [(A, NOW + 2), (B, NOW + 2), (C, NOW + 2)]) == [door_knock(NOW + 2)]


def test_a_completed_sequence_is_not_the_start_of_the_next() -> None:
    loop = StaticSequence("loop", (C, A), Policy(open=(SSH,)))
    tracker = Tracker((DOOR, loop))
    assert [k.payload for k in run(tracker, [(A, NOW), (B, NOW), (C, NOW)])] == [StaticHit("door")]
    assert tracker.hit(CLIENT, A, NOW + 1) == []  # C was used up by door
    assert [k.payload for k in run(tracker, [(C, NOW + 2), (A, NOW + 2)])] == [StaticHit("loop")]


@pytest.mark.parametrize("order", [(A, C, B), (B, A, C), (C, B, A), (A, B, A, C)])
def test_out_of_order_fails(order: tuple[Request, ...]) -> None:
    tracker = Tracker((DOOR,))
    assert run(tracker, [(r, NOW + i) for i, r in enumerate(order)]) == []


def test_timeout_is_from_the_first_port_to_the_last() -> None:
    tracker = Tracker((DOOR,))
    assert run(tracker, [(A, NOW), (B, NOW + 3), (C, NOW + 5.01)]) == []
    tracker = Tracker((DOOR,))
    assert run(tracker, [(A, NOW), (B, NOW + 3), (C, NOW + 5)]) == [door_knock(NOW + 5)]


def test_a_slow_attempt_followed_by_a_prompt_one_completes() -> None:
    tracker = Tracker((DOOR,))
    assert run(tracker, [(A, NOW), (B, NOW + 9)]) == []
    assert run(tracker, [(A, NOW + 20), (B, NOW + 21), (C, NOW + 22)]) == [door_knock(NOW + 22)]


def test_restart_with_the_first_port_after_a_stale_one() -> None:
    # The person sent A, gave up, and ran `knock` again a minute later: the
    # second A is "equal to the previous hit", so it refreshes rather than repeats.
    tracker = Tracker((DOOR,))
    assert run(tracker, [(A, NOW), (A, NOW + 60), (B, NOW + 61), (C, NOW + 62)]) == [door_knock(NOW + 62)]


def test_wrong_port_then_a_fresh_correct_sequence_completes() -> None:
    tracker = Tracker((DOOR,))
    stray = Request("tcp", 7500)
    assert run(tracker, [(A, NOW), (stray, NOW + 1), (C, NOW + 2)]) == []
    assert run(tracker, [(A, NOW + 3), (B, NOW + 3), (C, NOW + 4)]) == [door_knock(NOW + 4)]


def test_two_sources_are_tracked_apart() -> None:
    tracker = Tracker((DOOR,))
    found: list[Knock] = []
    for i, request in enumerate((A, B, C)):
        found += tracker.hit(CLIENT, request, NOW + i)
        found += tracker.hit(OTHER, request, NOW + i + 0.5)
    assert found == [door_knock(NOW + 2), door_knock(NOW + 2.5, OTHER)]
    assert len(tracker) == 2


def test_two_people_behind_one_nat_break_each_other() -> None:
    # The documented limit: state is per source address.
    tracker = Tracker((DOOR,))
    assert run(tracker, [(A, NOW), (A, NOW), (B, NOW + 1), (B, NOW + 1), (C, NOW + 2), (C, NOW + 2)]) == [
        door_knock(NOW + 2)
    ]  # identical interleaving collapses into duplicates and still works
    other = StaticSequence("gate", (Request("tcp", 1111), Request("tcp", 2222)), Policy(open=(SSH,)))
    tracker = Tracker((DOOR, other))
    hits = [(A, NOW), (Request("tcp", 1111), NOW), (B, NOW + 1), (Request("tcp", 2222), NOW + 1), (C, NOW + 2)]
    # Interleaved, neither person's sequence is a tail of the shared history.
    assert run(tracker, hits) == []


def test_sequences_sharing_ports() -> None:
    short = StaticSequence("short", (B, C), Policy(open=(RDP,)))
    tracker = Tracker((DOOR, short))
    found = run(tracker, [(A, NOW), (B, NOW), (C, NOW)])
    assert {k.payload for k in found} == {StaticHit("door"), StaticHit("short")}
    assert run(tracker, [(B, NOW + 1), (C, NOW + 1)]) == [
        Knock(Carrier.SEQUENCE, Form.STATIC, StaticHit("short"), CLIENT, NOW + 1)
    ]


def test_one_port_sequence() -> None:
    tracker = Tracker((StaticSequence("one", (C,), Policy(open=(SSH,))),))
    assert [k.payload for k in tracker.hit(CLIENT, C, NOW)] == [StaticHit("one")]


def test_fixed_sequence_decided_by_a_gate() -> None:
    keyring = Keyring(OBFUSCATION_KEY, [alice_record()], statics=(DOOR,))
    gate = Gate(keyring, Ledger(retention=660))
    tracker = Tracker(tuple(keyring.statics.values()))
    (knock,) = run(tracker, [(A, NOW), (B, NOW + 1), (C, NOW + 2)])
    decision = gate.decide(knock)
    assert isinstance(decision, Accepted)
    assert [(g.address, g.request, g.key) for g in decision.grants] == [(CLIENT, SSH, "sequence:door")]


# -- one-time sequences ------------------------------------------------------


def otp_ports(table: dict[tuple[int, ...], SequenceHit], index: int = 0) -> tuple[tuple[int, ...], SequenceHit]:
    current = NOW // 30
    return next((ports, hit) for ports, hit in table.items() if hit.step == current and hit.request_index == index)


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_one_time_sequence_decided_by_the_gate(proto: str) -> None:
    bench = make_bench()
    table = bench.gate.sequences(NOW)
    tracker = Tracker()
    tracker.set_otp(table)
    ports, expected = otp_ports(table, index=1)
    found = run(tracker, [(Request(proto, port), NOW + i) for i, port in enumerate(ports)])
    assert found == [Knock(Carrier.SEQUENCE, Form.SEQUENCE, expected, CLIENT, NOW + len(ports) - 1)]
    decision = bench.gate.decide(found[0])
    assert isinstance(decision, Accepted)
    assert [(g.address, g.request) for g in decision.grants] == [(CLIENT, RDP)]


def test_one_time_sequence_mixed_protocols_and_duplicates() -> None:
    bench = make_bench()
    table = bench.gate.sequences(NOW)
    tracker = Tracker()
    tracker.set_otp(table)
    ports, expected = otp_ports(table)
    a, b, c = ports
    hits = [(Request("tcp", a), NOW), (Request("tcp", a), NOW + 1), (Request("udp", b), NOW + 1), (Request("tcp", c), NOW + 2)]
    assert [k.payload for k in run(tracker, hits)] == [expected]


def test_one_time_sequence_out_of_order_or_too_slow() -> None:
    bench = make_bench()
    table = bench.gate.sequences(NOW)
    ports, _ = otp_ports(table)
    tracker = Tracker(otp_timeout=10.0)
    tracker.set_otp(table)
    assert run(tracker, [(Request("tcp", p), NOW) for p in reversed(ports)]) == []
    slow = [(Request("tcp", p), NOW + 20 + 6 * i) for i, p in enumerate(ports)]
    assert run(tracker, slow) == []


def test_one_time_sequence_after_noise_and_with_a_fresh_table() -> None:
    bench = make_bench()
    tracker = Tracker()
    tracker.set_otp(bench.gate.sequences(NOW))
    noise = [(Request("tcp", 20000 + i), NOW) for i in range(5)]
    later = NOW + 300  # the daemon refreshed the table since: old ports are gone
    tracker.set_otp(bench.gate.sequences(later))
    old_ports, _ = otp_ports(bench.gate.sequences(NOW))
    assert run(tracker, noise + [(Request("tcp", p), later) for p in old_ports]) == []
    new_ports, new_hit = next((p, h) for p, h in bench.gate.sequences(later).items() if h.step == later // 30)
    found = run(tracker, [(Request("tcp", p), later + 1) for p in new_ports])
    assert [k.payload for k in found] == [new_hit]
    assert isinstance(bench.gate.decide(found[0]), Accepted)


def test_table_of_longer_sequences_resizes_the_memory() -> None:
    table = {(1001, 1002, 1003, 1004, 1005): SequenceHit(7, 1, 0)}
    tracker = Tracker()
    tracker.hit(CLIENT, Request("tcp", 1001), NOW)  # remembered before the table arrived
    tracker.set_otp(table)
    found = run(tracker, [(Request("tcp", p), NOW) for p in (1002, 1003, 1004, 1005)])
    assert [k.payload for k in found] == [SequenceHit(7, 1, 0)]


# -- memory ------------------------------------------------------------------


def spray(tracker: Tracker, first: int, count: int) -> None:
    """Two hits each from ``count`` distinct sources, with fresh Request objects as an intake makes them."""
    for i in range(first, first + count):
        source = ipaddress.IPv4Address(0x0A000000 + i)
        tracker.hit(source, Request("tcp", 7000), NOW)
        tracker.hit(source, Request("tcp", 8000), NOW)


def test_sources_are_bounded_least_recently_active_out() -> None:
    tracker = Tracker((DOOR,), max_sources=65536)
    spray(tracker, 0, 200_000)
    assert len(tracker) == 65536
    newest = ipaddress.IPv4Address(0x0A000000 + 199_999)
    oldest_kept = ipaddress.IPv4Address(0x0A000000 + 200_000 - 65536)
    dropped = ipaddress.IPv4Address(0x0A000000 + 200_000 - 65537)
    assert tracker.hit(newest, C, NOW + 1) == [door_knock(NOW + 1, newest)]
    assert tracker.hit(oldest_kept, C, NOW + 1) == [door_knock(NOW + 1, oldest_kept)]
    assert tracker.hit(dropped, C, NOW + 1) == []


def test_activity_keeps_a_source() -> None:
    first, second, third = (ipaddress.IPv4Address(f"192.0.2.{i}") for i in (1, 2, 3))
    tracker = Tracker((DOOR,), max_sources=2)
    tracker.hit(first, A, NOW)
    tracker.hit(second, A, NOW)
    tracker.hit(first, B, NOW)  # first is now the more recently active
    tracker.hit(third, A, NOW)  # evicts second
    assert len(tracker) == 2
    assert tracker.hit(first, C, NOW) == [door_knock(NOW, first)]
    assert run(tracker, [(B, NOW), (C, NOW)], source=second) == []


def test_memory_per_source_and_no_growth_once_full() -> None:
    # tracemalloc only subtracts frees of blocks it saw allocated, so trace from an empty tracker.
    tracker = Tracker((DOOR,), max_sources=2000)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        spray(tracker, 0, 2000)
        full = tracemalloc.get_traced_memory()[0]
        spray(tracker, 2000, 8000)
        settled = tracemalloc.get_traced_memory()[0]
        spray(tracker, 10_000, 8000)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(tracker) == 2000
    # About 180 bytes (packed address, packed hits, the dict entry): 12 MB for
    # 65,536 sources (lists of tuples under ipaddress keys took ~600).
    per_source = (full - before) / 2000
    assert per_source < 260, f"{per_source:.0f} bytes per source"
    # Evictions leave the LRU's hash table a little larger once, then it holds steady.
    assert settled - full < (full - before) / 4, f"grew by {settled - full} bytes once full"
    assert after - settled < 16 * 1024, f"grew by {after - settled} bytes in steady state"


def test_each_source_keeps_only_the_longest_sequence() -> None:
    tracker = Tracker((DOOR,))
    for port in range(1000, 1100):
        tracker.hit(CLIENT, Request("tcp", port), NOW)
    assert len(tracker.hits(CLIENT)) == 3  # the bound is the point


def test_max_sources_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Tracker(max_sources=0)


# -- knock ports (spa.core.sequence) -----------------------------------------------------------


def test_watched_merges_ranges_per_protocol() -> None:
    rule = SequenceRule(low=20000, high=59999)
    statics = (
        DOOR,
        StaticSequence("near", (Request("tcp", 7001), Request("tcp", 6999), Request("udp", 20000)), Policy(open=(SSH,))),
        StaticSequence("inside", (Request("tcp", 30000), Request("udp", 60000)), Policy(open=(SSH,))),
    )
    assert knock_ports(statics, rule, otp=False) == (
        ("tcp", 6999, 7001), ("tcp", 8000, 8000), ("tcp", 30000, 30000),
        ("udp", 9000, 9000), ("udp", 20000, 20000), ("udp", 60000, 60000),
    )
    assert knock_ports(statics, rule, otp=True) == (
        ("tcp", 6999, 7001), ("tcp", 8000, 8000), ("tcp", 20000, 59999),
        ("udp", 9000, 9000), ("udp", 20000, 60000),
    )
    assert knock_ports((), rule, otp=True) == (("tcp", 20000, 59999), ("udp", 20000, 59999))
    assert knock_ports((), rule, otp=False) == ()


# -- any traffic -----------------------------------------------------------------

_hits = st.lists(
    st.tuples(st.integers(0, 3), st.sampled_from(["tcp", "udp"]),
              st.one_of(st.integers(1, 65535), st.sampled_from([7000, 8000, 9000])),
              st.floats(min_value=-1e3, max_value=1e6, allow_nan=False)),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(_hits, st.integers(1, 4))
def test_any_hits_give_well_formed_knocks_and_bounded_state(hits: list[tuple[int, str, int, float]],
                                                            max_sources: int) -> None:
    # Any order, any times (even going backwards), any ports: the tracker never
    # raises, every knock it gives names a known sequence, memory stays bounded.
    bench = make_bench()
    table = bench.gate.sequences(NOW)
    tracker = Tracker((DOOR,), max_sources=max_sources)
    tracker.set_otp(table)
    for source, proto, port, at in hits:
        for knock in tracker.hit(ipaddress.IPv4Address(source), Request(proto, port), NOW + at):
            assert knock.carrier == Carrier.SEQUENCE and knock.received == NOW + at
            if knock.form == Form.STATIC:
                assert knock.payload == StaticHit("door")
            else:
                assert knock.form == Form.SEQUENCE and knock.payload in table.values()
        assert len(tracker) <= max_sources


def test_hits_beyond_a_sources_budget_are_not_guesses() -> None:
    """Each hit is a guess at a one-time sequence: one source at packet rate
    would get ~10^11 guesses a month. Past its budget a source's hits are not
    looked at; an IPv6 /64 is one source (its owner has every address in it)."""
    tracker = Tracker((DOOR,), hit_rate=1.0, hit_burst=3)
    guesser = ipaddress.ip_address("2001:db8:1:2::1")
    for n in range(3):
        tracker.hit(ipaddress.ip_address(f"2001:db8:1:2::{n + 10}"), Request("tcp", 20000 + n), 100.0)
    # The /64's budget is spent: even the fixed sequence is not seen now ...
    assert [tracker.hit(guesser, step, 100.0) for step in DOOR.steps] == [[], [], []]
    assert tracker.over_budget == 3
    # ... another prefix is not affected, and the budget grows back.
    other = ipaddress.ip_address("2001:db8:1:3::1")
    assert [k.form for s in DOOR.steps for k in tracker.hit(other, s, 100.0)] == [Form.STATIC]
    assert [k.form for s in DOOR.steps for k in tracker.hit(guesser, s, 103.0 + DOOR.steps.index(s))] == [Form.STATIC]
