"""The wrong-code budget (spa.core.guesses): what it caps, and that a restart forgives nothing."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from makings import CLIENT, NOW, alice_record

from spa.core.events import Accepted, Carrier, Form, Knock, OtpCode, Reason, Rejection
from spa.core.gate import Gate, GateSettings
from spa.core.guesses import DAY, CodeLimits, FileGuesses, Guesses, GuessesCorrupt
from spa.core.keyring import Keyring
from spa.core.ledger import Ledger

LIMITS = CodeLimits(key_burst=4, key_per_day=2, source_threshold=100)
SOURCE = CLIENT.packed


def test_the_budget_is_a_burst_then_a_trickle() -> None:
    guesses = Guesses(LIMITS)
    strikes = [guesses.wrong(7, SOURCE, NOW) for _ in range(4)]
    assert [s.left for s in strikes] == [3, 2, 1, 0]
    assert strikes[0].first and not strikes[1].first and strikes[-1].spent
    assert guesses.refusal(7, SOURCE, NOW) is not None
    assert guesses.refusal(8, SOURCE, NOW) is None, "another key's budget is its own"
    half_day = NOW + DAY / 2
    assert guesses.refusal(7, SOURCE, half_day - 1) is not None
    assert guesses.refusal(7, SOURCE, half_day) is None and guesses.left(7, half_day) == 1
    assert guesses.wrong(7, SOURCE, half_day).spent


def test_sources_do_not_matter_to_the_key_budget() -> None:
    guesses = Guesses(LIMITS)
    for n in range(4):
        guesses.wrong(7, ipaddress.ip_address(f"192.0.2.{n}").packed, NOW)
    assert "budget is spent" in (guesses.refusal(7, ipaddress.ip_address("192.0.2.99").packed, NOW) or "")


def test_a_right_code_does_not_refill_the_budget() -> None:
    guesses = Guesses(LIMITS)
    for _ in range(3):
        guesses.wrong(7, SOURCE, NOW)
    guesses.right(SOURCE)
    assert guesses.left(7, NOW) == 1  # else each success of the owner would hand the guesser a new burst


def test_the_file_keeps_every_wrong_code(tmp_path: Path) -> None:
    path = tmp_path / "guesses"
    guesses = FileGuesses(path, LIMITS, now=NOW)
    for _ in range(4):
        guesses.wrong(7, SOURCE, NOW)
    # Written before wrong() returned: a SIGKILL now forgets nothing.
    assert path.read_text().count("key 7 ") == 4
    guesses.close()
    again = FileGuesses(path, LIMITS, now=NOW + 60)
    assert again.left(7, NOW + 60) == 0 and again.refusal(7, SOURCE, NOW + 60) is not None
    again.close()
    # Whole again later; the file shrinks to one line a key (keys are never forgotten: see below).
    later = FileGuesses(path, LIMITS, now=NOW + 3 * DAY)
    assert later.left(7, NOW + 3 * DAY) == 4 and path.read_text().count("key 7 ") == 1
    later.close()


# -- what an outside review tried (each failed before its fix) -------------------------------


def test_a_reload_with_a_smaller_daily_budget_refunds_nothing(tmp_path: Path) -> None:
    path = tmp_path / "guesses"
    guesses = FileGuesses(path, CodeLimits(key_burst=20, key_per_day=10), now=NOW)
    for _ in range(20):
        guesses.wrong(7, SOURCE, NOW)
    guesses.close()
    tighter = FileGuesses(path, CodeLimits(key_burst=20, key_per_day=1), now=NOW + 1)
    assert tighter.left(7, NOW + 1) == 0, "the file counted seconds, and a new interval turned them into codes"
    tighter.close()


def test_a_clock_days_ahead_at_start_does_not_erase_a_spent_budget(tmp_path: Path) -> None:
    path = tmp_path / "guesses"
    guesses = FileGuesses(path, LIMITS, now=NOW)
    for _ in range(4):
        guesses.wrong(7, SOURCE, NOW)
    guesses.close()
    FileGuesses(path, LIMITS, now=NOW + 3 * DAY).close()  # a wrong clock at boot, then corrected
    assert FileGuesses(path, LIMITS, now=NOW + 60).left(7, NOW + 60) == 0


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_values_that_are_not_finite_are_damage(tmp_path: Path, value: str) -> None:
    path = tmp_path / "guesses"
    path.write_text(f"key 7 {NOW:.3f} {value}\n")
    with pytest.raises(GuessesCorrupt):
        FileGuesses(path, LIMITS, now=NOW)
    path.write_text(f"key 7 {value} 1.0\n")
    with pytest.raises(GuessesCorrupt):
        FileGuesses(path, LIMITS, now=NOW)


def test_an_unwritable_file_refuses_codes_unchecked_until_it_can_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Else a restart would forget every wrong code that could not be written."""
    import errno

    from spa.core.journal import Journal

    guesses = FileGuesses(tmp_path / "guesses", LIMITS, now=NOW)

    def full(*_args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(Journal, "append", full)
        patch.setattr(Journal, "rewrite", full)
        with pytest.raises(OSError):
            guesses.wrong(7, SOURCE, NOW)
        assert "not writable" in (guesses.refusal(7, SOURCE, NOW) or "")
        assert "not writable" in (guesses.refusal(8, SOURCE, NOW) or ""), "every key: the file is one"
    # Space is back: a whole rewrite (not an append after a failure) makes it healthy again.
    assert guesses.refusal(7, SOURCE, NOW) is None
    guesses.close()
    assert FileGuesses(tmp_path / "guesses", LIMITS, now=NOW).left(7, NOW) == 3


def test_replaying_a_used_code_does_not_clear_the_sources_count() -> None:
    settings = GateSettings(otp_failures_per_key=1000, otp_failures_per_source=5)
    gate = Gate(Keyring(bytes(range(32)), [alice_record()]), Ledger(660), settings)
    from spa.core import otp

    used = otp.totp(alice_record().totp_secret or "").at(NOW)

    def knock(digits: str) -> object:
        return gate.decide(Knock(Carrier.DNS, Form.OTP, OtpCode("alice", digits), CLIENT, NOW))

    assert isinstance(knock(used), Accepted)
    outcomes = []
    for n in range(3):
        for m in range(4):
            outcomes.append(knock(f"{n * 4 + m + 1:06d}"))
        knock(used)  # a replay: the source's count must go on
    checked = [d for d in outcomes if isinstance(d, Rejection) and d.reason == Reason.BAD_CODE]
    assert len(checked) == 5, [getattr(d, "reason", d) for d in outcomes]


def test_the_source_lockout_survives_too(tmp_path: Path) -> None:
    limits = CodeLimits(key_burst=50, key_per_day=10, source_threshold=2, lockout=300)
    guesses = FileGuesses(tmp_path / "guesses", limits, now=NOW)
    guesses.wrong(7, SOURCE, NOW)
    assert guesses.wrong(7, SOURCE, NOW).source_locked == 300
    guesses.close()
    again = FileGuesses(tmp_path / "guesses", limits, now=NOW + 10)
    assert "source locked out" in (again.refusal(7, SOURCE, NOW + 10) or "")
    again.close()


def test_a_torn_last_line_is_dropped_and_damage_refuses(tmp_path: Path) -> None:
    path = tmp_path / "guesses"
    guesses = FileGuesses(path, LIMITS, now=NOW)
    guesses.wrong(7, SOURCE, NOW)
    guesses.close()
    with open(path, "a") as handle:
        handle.write("key 7 17")  # a crash mid-write
    FileGuesses(path, LIMITS, now=NOW).close()
    assert path.read_text().endswith("\n")
    path.write_text(path.read_text() + "key seven 1\n")
    with pytest.raises(GuessesCorrupt, match=r"guesses:\d+: damaged"):
        FileGuesses(path, LIMITS, now=NOW)


def test_a_new_gate_on_the_same_file_refuses_what_the_old_one_did(tmp_path: Path) -> None:
    """A worker restart or a reload: a new Gate reading the file back."""
    settings = GateSettings(otp_failures_per_key=3, otp_failures_per_source=100)
    keyring = Keyring(bytes(range(32)), [alice_record()])

    def gate() -> Gate:
        return Gate(keyring, Ledger(660), settings, FileGuesses(tmp_path / "guesses", settings.codes, now=NOW))

    def knock(digits: str, at: float = NOW) -> Knock:
        return Knock(Carrier.DNS, Form.OTP, OtpCode("alice", digits), CLIENT, at)

    first = gate()
    for _ in range(3):
        assert first.decide(knock("000001")).reason == Reason.BAD_CODE  # type: ignore[union-attr]
    from spa.core import otp
    right = otp.totp(alice_record().totp_secret or "").at(NOW)
    decision = gate().decide(knock(right))
    assert isinstance(decision, Rejection) and decision.reason == Reason.LOCKED_OUT
    grown = NOW + DAY / settings.otp_failures_per_key_per_day
    assert isinstance(gate().decide(knock(otp.totp(alice_record().totp_secret or "").at(grown), grown)), Accepted)
