"""The replay ledger on disk, and the bounded rate limits."""

from __future__ import annotations

import errno
import ipaddress
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from makings import CLIENT, NOW

from spa.core.ledger import FOREVER, Entry, FileLedger, LedgerCorrupt
from spa.core.limits import Buckets, Lockout


def test_accepted_tokens_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "ledger"
    ledger = FileLedger(path, retention=660)
    ledger.record(b"\x01" * 16, Entry(CLIENT, NOW, NOW), NOW)
    ledger.record(b"code", Entry(CLIENT, NOW, FOREVER), NOW)
    # No close(): a SIGKILL'd daemon closes nothing; fsync already happened.
    again = FileLedger(path, retention=660)
    assert again.get(b"\x01" * 16) == Entry(CLIENT, NOW, NOW)
    assert again.get(b"code") is not None


def test_pruning_raises_a_floor_that_is_persisted(tmp_path: Path) -> None:
    path = tmp_path / "ledger"
    ledger = FileLedger(path, retention=100)
    ledger.record(b"old", Entry(CLIENT, NOW, NOW), NOW)
    ledger.record(b"new", Entry(CLIENT, NOW + 500, NOW + 500), NOW + 500)  # prunes "old"
    assert ledger.get(b"old") is None and ledger.floor == NOW
    assert FileLedger(path, retention=100).floor == NOW


def test_emergency_codes_are_never_pruned(tmp_path: Path) -> None:
    ledger = FileLedger(tmp_path / "ledger", retention=10)
    ledger.record(b"code", Entry(CLIENT, NOW, FOREVER), NOW)
    ledger.prune(NOW + 10**9)
    assert ledger.get(b"code") is not None


def test_a_torn_last_line_is_dropped_other_damage_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "ledger"
    FileLedger(path, retention=660).record(b"ok", Entry(CLIENT, NOW, NOW), NOW)
    with open(path, "a") as handle:
        handle.write("deadbeef 198.51.1")  # the crash came mid-write
    ledger = FileLedger(path, retention=660)
    assert ledger.get(b"ok") is not None and len(ledger) == 1
    ledger.record(b"next", Entry(CLIENT, NOW, NOW), NOW)
    assert len(FileLedger(path, retention=660)) == 2
    path.write_text("garbage line\n" + path.read_text())
    with pytest.raises(LedgerCorrupt, match=r"ledger:1: damaged"):
        FileLedger(path, retention=660)


def test_compaction_keeps_live_entries(tmp_path: Path) -> None:
    path = tmp_path / "ledger"
    ledger = FileLedger(path, retention=10)
    for i in range(1500):
        ledger.record(i.to_bytes(4, "big"), Entry(CLIENT, NOW + i * 20, NOW + i * 20), NOW + i * 20)
    lines = path.read_text().count("\n")
    assert lines < 1500  # rewritten along the way
    reloaded = FileLedger(path, retention=10)
    assert reloaded.get((1499).to_bytes(4, "big")) is not None
    assert reloaded.floor >= NOW + 1400 * 20


def test_deferred_sync_fsyncs_once_for_what_was_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    ledger = FileLedger(tmp_path / "ledger", retention=100, sync_each=False)
    ledger.record(b"\x01" * 16, Entry(CLIENT, NOW, int(NOW)), NOW)
    assert synced == []  # written, not yet durable: the daemon holds the grant meanwhile
    ledger.sync()
    ledger.sync()  # nothing new written: no second fsync
    assert len(synced) == 1
    ledger.close()
    assert FileLedger(tmp_path / "ledger", retention=100).get(b"\x01" * 16) is not None


def test_a_failed_fsync_fails_every_later_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = FileLedger(tmp_path / "ledger", retention=100, sync_each=False)
    ledger.record(b"\x01" * 16, Entry(CLIENT, NOW, int(NOW)), NOW)

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError):
        ledger.sync()
    monkeypatch.undo()  # the disk "recovers", but the pages it dropped are gone
    ledger.record(b"\x02" * 16, Entry(CLIENT, NOW, int(NOW)), NOW)
    with pytest.raises(OSError, match="earlier fsync"):
        ledger.sync()


def test_buckets_refill_and_stay_bounded() -> None:
    buckets = Buckets(rate=1.0, burst=2, capacity=100)
    assert [buckets.take("a", 0.0) for _ in range(3)] == [True, True, False]
    assert buckets.take("a", 1.0)
    for n in range(1000):
        buckets.take(ipaddress.ip_address(n), 0.0)
    assert len(buckets) == 100


def _reference_bucket(rate: float, burst: float, steps: list[float]) -> list[bool]:
    """The plain token bucket (tokens and a timestamp) Buckets replaced."""
    tokens, last, out = burst, steps[0] if steps else 0.0, []
    for now in steps:
        tokens = min(burst, tokens + max(0.0, now - last) * rate)
        last = now
        out.append(tokens >= 1.0)
        if out[-1]:
            tokens -= 1.0
    return out


@settings(max_examples=300, deadline=None)
@given(st.floats(0.01, 100), st.integers(1, 30), st.lists(st.floats(0, 5), max_size=60))
def test_buckets_decide_as_a_token_bucket_would(rate: float, burst: int, gaps: list[float]) -> None:
    steps, now = [], 1000.0
    for gap in gaps:
        now += round(gap, 3)
        steps.append(now)
    buckets = Buckets(rate, burst, capacity=4)
    assert [buckets.take(b"k", at) for at in steps] == _reference_bucket(rate, burst, steps)


def test_lockout_threshold_period_and_expiry() -> None:
    lockout = Lockout(threshold=3, period=60, lockout=100, capacity=10)
    assert [lockout.fail("k", t) for t in (0, 1, 2)] == [False, False, True]
    assert lockout.locked("k", 50) and not lockout.locked("k", 103)
    assert not lockout.fail("k", 70)  # still locked: counting goes on, no new lockout
    assert lockout.locked("k", 101)  # the period ending does not end a lockout in force
    fresh = Lockout(threshold=2, period=10, lockout=100, capacity=10)
    fresh.fail("s", 0)
    assert not fresh.fail("s", 20)  # the first failure fell out of the period
    fresh.succeed("s")
    assert not fresh.fail("s", 21)


def test_lockout_locks_again_after_it_ends_within_the_period() -> None:
    # Regression: failures after a lockout ended but inside the period used to
    # count past the threshold without ever locking again (unlimited guessing).
    lockout = Lockout(threshold=3, period=600, lockout=100, capacity=10)
    assert [lockout.fail("k", t) for t in (0, 1, 2)] == [False, False, True]
    assert [lockout.fail("k", t) for t in (102, 103, 104)] == [False, False, True]
    assert lockout.locked("k", 150)
    # Guessing as fast as allowed for an hour checks at most threshold per lockout.
    capped = Lockout(threshold=20, period=600, lockout=300, capacity=10)
    checked = 0
    for tick in range(360_000):
        now = tick / 100
        if not capped.locked("k", now):
            capped.fail("k", now)
            checked += 1
    assert checked <= 20 * (3600 // 300 + 1)


def test_repeated_lockouts_double_up_to_a_day_and_a_quiet_spell_forgives() -> None:
    lockout = Lockout(threshold=2, period=600, lockout=100, capacity=10)
    now, lengths = 0.0, []
    for _ in range(12):  # a guesser who waits out every lockout, then tries again
        lockout.fail("k", now)
        assert lockout.fail("k", now)
        lengths.append(lockout.remaining("k", now))
        now += lengths[-1]
    assert lengths[:4] == [100, 200, 400, 800] and max(lengths) == 86400
    # Quiet for as long as the last lockout: the next one starts short again.
    now += 86400
    lockout.fail("k", now)
    lockout.fail("k", now)
    assert lockout.remaining("k", now) == 100
    # With spa's defaults a day of non-stop guessing gets ~180 codes checked per key, not 5,760.
    assert Lockout(threshold=20, period=300, lockout=300, capacity=10).checks_per_day() == 180


def test_a_burst_is_whole_at_unix_times() -> None:
    """At ~1.8e9 s one float step is ~2e-7 s: an absolute slack of 1e-9 made every burst one short."""
    buckets = Buckets(5.0, 20, 10)
    assert sum(buckets.take(b"k", 1_790_000_000.123) for _ in range(25)) == 20
