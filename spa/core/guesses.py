"""Wrong one-time codes: how many each key may still take, kept across restarts.

A one-time code has 6 to 10 digits, so it can be guessed in principle; a
MAC cannot (docs/gate.md). Two limits count wrong codes:

* per key, a **budget** that holds however the guesses are paced and
  however many sources send them: ``burst`` wrong codes, then ``per_day``
  more each day (a token bucket, kept as one float per key: the time at
  which the key's budget is whole again). With 20 and 10 a guesser gets
  320 codes checked in 30 days, ~0.1% to hit a 6-digit code (±1 TOTP step);
  once it is spent, even the right code is refused until the budget grows.
* per source, the lockout of :class:`spa.core.limits.Lockout`: a courtesy,
  since a guesser who spoofs sources evades it, that keeps one careless
  source from spending its key's budget alone.

:class:`FileGuesses` writes each wrong code to the worker's state directory
before the rejection is returned, so a worker restart, a reload or a
restart of spa forgives nothing. The writes are bounded by the budget
itself: a refused guess is not written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from spa.errors import SpaError

from .journal import Journal
from .limits import Lockout, Strikes

DAY = 86400.0


@dataclass(frozen=True)
class CodeLimits:
    """The ``[limits]`` options that count wrong codes."""

    key_burst: int = 20  # wrong codes a key may take at once
    key_per_day: float = 10.0  # and how many more each day after
    source_threshold: int = 5  # wrong codes from one source before it is locked out
    period: float = 600.0
    lockout: float = 300.0  # the first source lockout; each one that follows doubles
    capacity: int = 65536  # sources remembered at most

    def checks_in(self, days: float) -> int:
        """The most codes one key gets checked in ``days``, whatever the pacing."""
        return self.key_burst + math.floor(days * self.key_per_day)


@dataclass(frozen=True)
class Strike:
    """What one wrong code cost."""

    left: int  # wrong codes the key may still take
    first: bool  # the key's budget was whole: the first sign of guessing
    spent: bool  # this one spent the budget: codes refused from now on
    source_locked: float  # seconds this source is locked out for now (0: not)


class Guesses:
    """Wrong-code state in memory: the base of :class:`FileGuesses` and enough for tests."""

    def __init__(self, limits: CodeLimits) -> None:
        self.limits = limits
        self._interval = DAY / limits.key_per_day
        self._whole_at: dict[int, float] = {}  # key id -> when its budget is whole again
        self._sources = Lockout(limits.source_threshold, limits.period, limits.lockout, limits.capacity)

    def __len__(self) -> int:
        return len(self._whole_at) + len(self._sources)

    def left(self, key_id: int, now: float) -> int:
        """Wrong codes key ``key_id`` may still take at ``now``."""
        owed = max(0.0, self._whole_at.get(key_id, now) - now)
        return max(0, self.limits.key_burst - math.ceil(owed / self._interval - 1e-9))

    def refusal(self, key_id: int, source: bytes, now: float) -> str | None:
        """Why codes for ``key_id`` from ``source`` are not even checked now, or None."""
        if self.left(key_id, now) == 0:
            wait = self._whole_at[key_id] - now - (self.limits.key_burst - 1) * self._interval
            return f"this key's wrong-code budget is spent; the next code is checked in {wait / 60:.0f} min"
        if self._sources.locked(source, now):
            return f"source locked out for {self._sources.remaining(source, now):.0f} s"
        return None

    def wrong(self, key_id: int, source: bytes, now: float) -> Strike:
        """Count one wrong code for ``key_id`` from ``source``."""
        before = self._whole_at.get(key_id, now)
        self._whole_at[key_id] = max(before, now) + self._interval
        locked = self._sources.fail(source, now)
        left = self.left(key_id, now)
        return Strike(left, before <= now, left == 0, self._sources.remaining(source, now) if locked else 0.0)

    def right(self, source: bytes) -> None:
        """A right code: the source's count starts afresh (the key's budget does not grow)."""
        self._sources.succeed(source)


class GuessesCorrupt(SpaError):
    """The wrong-code file is damaged: starting afresh would forgive a guesser."""


class FileGuesses(Guesses):
    """Wrong-code state kept in an append-only file (:class:`~spa.core.journal.Journal`).

    Lines: ``key ID AT OWED`` (at time AT the key owed OWED wrong codes: in
    codes, not seconds, so a reload with another ``key_per_day`` refunds
    nothing) and ``source HEX SINCE COUNT LOCKED_UNTIL LEVEL FORGIVEN_AT``;
    the last line for a key or source wins. Each wrong code is written and
    fsynced before :meth:`wrong` returns. If that fails, the state is
    *unhealthy*: codes are refused unchecked (fail closed, or a restart
    would forget the unwritten ones) until the whole state is written again.
    """

    def __init__(self, path: Path, limits: CodeLimits, directory: int | None = None, now: float = 0.0) -> None:
        super().__init__(limits)
        self.path = path
        self.journal = Journal(path, directory)
        self.unwritable: str | None = None  # why the last write failed, until a rewrite succeeds
        try:
            lines = self.journal.read()
            for number, line in enumerate(lines, start=1):
                try:
                    self._apply(line)
                except (ValueError, IndexError, OverflowError):
                    raise GuessesCorrupt(
                        f"{path}:{number}: damaged wrong-code state; refusing to start rather than forgive "
                        "a guesser (move the file away to start afresh)"
                    ) from None
        except (OSError, UnicodeDecodeError) as problem:
            self.journal.close()
            raise GuessesCorrupt(f"{path}: cannot read wrong-code state: {problem}") from None
        except GuessesCorrupt:
            self.journal.close()
            raise
        try:
            self.journal.open()
        except OSError:
            self.journal.close()
            raise
        self._tidy(now)

    def _apply(self, line: str) -> None:
        kind, *fields = line.split(" ")
        if kind == "key" and len(fields) == 3:
            at, owed = _finite(fields[1]), _finite(fields[2])
            if owed < 0:
                raise ValueError(line)
            self._whole_at[int(fields[0])] = at + owed * self._interval
        elif kind == "source" and len(fields) == 6:
            since, count, until, level, forgiven = fields[1:]
            strikes = Strikes(_finite(since), int(count), _finite(until), int(level), _finite(forgiven))
            self._sources.put(bytes.fromhex(fields[0]), strikes)
        else:
            raise ValueError(line)

    def refusal(self, key_id: int, source: bytes, now: float) -> str | None:
        if self.unwritable is not None:
            self._tidy(now, always=True)  # a whole rewrite is the way back (fsyncgate: not an append)
            if self.unwritable is not None:
                return f"wrong-code state not writable ({self.unwritable}); codes are not checked until it is"
        return super().refusal(key_id, source, now)

    def wrong(self, key_id: int, source: bytes, now: float) -> Strike:
        strike = super().wrong(key_id, source, now)
        try:
            self.journal.append(self._key_line(key_id, now))
            strikes = self._sources.get(source)
            if strikes is not None:
                self.journal.append(_source_line(source, strikes))
            self.journal.sync()
        except OSError as problem:
            self.unwritable = problem.strerror or str(problem)
            raise
        if self.journal.lines > 1000 and self.journal.lines > 4 * (len(self) + 1):
            self._tidy(now)
        return strike

    def _key_line(self, key_id: int, now: float) -> str:
        owed = max(0.0, self._whole_at[key_id] - now) / self._interval
        return f"key {key_id} {now:.3f} {owed:.6f}"

    def _tidy(self, now: float, always: bool = False) -> None:
        """Forget sources that no longer limit anyone, and rewrite the file if that shrinks it.

        Keys are never forgotten (there are few): a start with the clock days
        ahead must not erase a spent budget that the corrected clock would
        still count. Sources are kept for a month past the end of their
        strikes, for the same reason. A rewrite that fails (a full disk)
        changes nothing the file says; it only stays longer.
        """
        forgotten = self._sources.forget(now - CLOCK_MARGIN)
        if always or forgotten or self.journal.lines > len(self):
            lines = [self._key_line(key, now) for key in self._whole_at]
            lines += [_source_line(source, strikes) for source, strikes in self._sources.items()
                      if isinstance(source, bytes)]  # always: the gate keys sources by packed address
            try:
                self.journal.rewrite(lines)
                self.unwritable = None
            except OSError as problem:
                if always:
                    self.unwritable = problem.strerror or str(problem)

    def close(self) -> None:
        self.journal.close()


CLOCK_MARGIN = 30 * DAY  # how far ahead a clock may have been when strikes are forgotten


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def _source_line(source: bytes, s: Strikes) -> str:
    return f"source {source.hex()} {s.since:.3f} {s.count} {s.locked_until:.3f} {s.level} {s.forgiven_at:.3f}"
