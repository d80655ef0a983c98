"""Rate limits outlive a worker restart, a reload and a restart of spa (spa.core.rates)."""

from __future__ import annotations

from pathlib import Path

from makings import CLIENT, NOW, make_bench

from spa.core.events import Accepted, Form, Reason, Rejection
from spa.core.gate import GateSettings
from spa.core.limits import Buckets
from spa.core.rates import RateFile

SETTINGS = GateSettings(key_rate=0.5, key_burst=3)


def accepted_in_a_row(bench: object, start: int) -> int:
    """Fresh compact tokens for alice, one per second of token time, all at NOW."""
    n = 0
    while n < 20:
        decision = bench.decide(Form.COMPACT, bench.compact(time=NOW - 50 + start + n))  # type: ignore[attr-defined]
        if not isinstance(decision, Accepted):
            assert isinstance(decision, Rejection) and decision.reason == Reason.RATE_LIMITED, decision
            return n
        n += 1
    return n


def test_a_new_gate_reading_the_file_keeps_the_key_limited(tmp_path: Path) -> None:
    rates = RateFile(tmp_path / "rates")
    first = make_bench(SETTINGS)
    assert accepted_in_a_row(first, 0) == 3  # the burst, then refused
    rates.save(first.gate.buckets(), NOW)
    # A worker restart or a reload: a new gate. Before, it started with a full burst.
    second = make_bench(SETTINGS)
    assert rates.load(second.gate.buckets(), NOW) >= 2  # the source's and the key's buckets
    assert accepted_in_a_row(second, 10) == 0, "a restart handed the key a new burst"
    # And the buckets go on refilling as before: one more grant every 2 s.
    later = second.decide(Form.COMPACT, second.compact(time=NOW - 10), at=NOW + 2)
    assert isinstance(later, Accepted)


def test_only_entries_not_full_are_kept_and_damage_restores_nothing(tmp_path: Path) -> None:
    path = tmp_path / "rates"
    buckets = {"source": Buckets(1.0, 2, 10), "key": Buckets(1.0, 2, 10)}
    buckets["source"].take(CLIENT.packed, NOW)
    buckets["key"].take(7, NOW)
    buckets["key"].take("sequence:office", NOW - 100)  # full again long ago
    RateFile(path).save(buckets, NOW)
    text = path.read_text()
    assert text.count("\n") == 2 and "s" + "sequence:office".encode().hex() not in text
    fresh = {"source": Buckets(1.0, 2, 10), "key": Buckets(1.0, 2, 10)}
    assert RateFile(path).load(fresh, NOW) == 2
    assert RateFile(path).load(fresh, NOW + 60) == 0  # all full by then: nothing to restore
    path.write_text("source bnothex 1.0\nkey i7 nan\nkey\n")
    assert RateFile(path).load(fresh, NOW) == 0
    assert RateFile(tmp_path / "missing").load(fresh, NOW) == 0


def test_an_idle_server_does_not_rewrite_the_file(tmp_path: Path) -> None:
    path = tmp_path / "rates"
    rates = RateFile(path)
    buckets = {"key": Buckets(1.0, 2, 10)}
    buckets["key"].take(7, NOW)
    rates.save(buckets, NOW)
    rates.save(buckets, NOW + 10)  # full again: the file is emptied once ...
    assert path.read_text() == ""
    path.write_text("marker\n")
    rates.save(buckets, NOW + 20)  # ... and not written again while nothing changes
    assert path.read_text() == "marker\n"


def test_a_planted_or_stale_file_cannot_lock_anyone_out_or_hang_the_start(tmp_path: Path) -> None:
    """Found by an outside review: a far-future entry (a subverted worker, or a
    clock that ran ahead) kept a key limited for years; a FIFO hung the start."""
    import os

    path = tmp_path / "rates"
    path.write_text(f"key i1 {NOW + 1e9:.3f}\n")
    buckets = {"key": Buckets(0.5, 10, 100)}
    assert RateFile(path).load(buckets, NOW) == 1
    assert buckets["key"].take(1, NOW + 10 / 0.5 + 1), "longer than an empty bucket takes to fill"
    path.unlink()
    os.mkfifo(path)
    assert RateFile(path).load(buckets, NOW) == 0  # returns at once, restores nothing
