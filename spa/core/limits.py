"""Rate limits and lockouts whose memory stays bounded whatever the traffic.

Both track at most ``capacity`` keys and forget the least recently used
one when full. For sources that is a trade-off made on purpose: an attacker
who spoofs many sources can push its own entry out, so per-source limits
are a courtesy and the per-key wrong-code budget (spa.core.guesses: keys
are few, never evicted) is what stops guessing.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass


class Buckets:
    """A token bucket per key: ``rate`` per second, up to ``burst`` at once.

    Kept as one float per key, the time at which the key's bucket would be
    full again (the "theoretical arrival time" of the generic cell rate
    algorithm, which behaves exactly like a token bucket): ~120 bytes a key
    with a packed address as the key, where two floats in a tuple under an
    ``ipaddress`` object took ~230.
    """

    def __init__(self, rate: float, burst: float, capacity: int) -> None:
        self.rate = rate
        self.burst = burst
        self.capacity = capacity
        self._interval = 1.0 / rate
        self._tolerance = (burst - 1.0) * self._interval
        # A dict keeps insertion order: pop and re-insert moves a key to the end,
        # so the first key is the least recently used.
        self._full_at: dict[Hashable, float] = {}

    def __len__(self) -> int:
        return len(self._full_at)

    def pending(self, now: float) -> list[tuple[Hashable, float]]:
        """Every key whose bucket is not full at ``now``, with when it will be (spa.core.rates)."""
        return [(key, full_at) for key, full_at in self._full_at.items() if full_at > now]

    def restore(self, key: Hashable, full_at: float) -> None:
        """Put back a key's state read from a file (the bucket fills up by ``full_at``)."""
        self._full_at.pop(key, None)
        self._full_at[key] = full_at
        if len(self._full_at) > self.capacity:
            del self._full_at[next(iter(self._full_at))]

    def take(self, key: Hashable, now: float) -> bool:
        """Spend one token for ``key``; False if its bucket is empty."""
        full_at = max(self._full_at.pop(key, now), now)
        # The slack is relative: at Unix times (~1.8e9 s) one float step is ~2e-7 s,
        # and an absolute 1e-9 made every burst one short.
        allowed = full_at - now <= self._tolerance + self._interval * 1e-3
        self._full_at[key] = full_at + self._interval if allowed else full_at
        if len(self._full_at) > self.capacity:
            del self._full_at[next(iter(self._full_at))]
        return allowed


LOCKOUT_CEILING = 86400.0  # seconds: the longest a repeated lockout grows to


@dataclass
class Strikes:
    """One key's failures: kept by :class:`Lockout`, and by its callers' files."""

    since: float
    count: int
    locked_until: float
    level: int = 0  # lockouts in a row, each twice as long as the one before
    forgiven_at: float = 0.0  # no failure until then: the next lockout starts short again


class Lockout:
    """Locks a key out after ``threshold`` failures in ``period``, for longer each time.

    The first lockout lasts ``lockout`` seconds, each one that follows
    (a guesser who simply waits it out) twice as long, up to a day. Without
    the growth, a patient source gets ``threshold`` guesses every
    ``lockout`` seconds forever. A success, or a quiet spell as long as the
    last lockout, resets the growth. Used per source for one-time codes
    (spa.core.guesses); a lockout alone cannot cap a guesser who paces
    itself just under the threshold from several sources.
    """

    def __init__(self, threshold: int, period: float, lockout: float, capacity: int) -> None:
        self.threshold = threshold
        self.period = period
        self.lockout = lockout
        self.capacity = capacity
        self._strikes: dict[Hashable, Strikes] = {}

    def __len__(self) -> int:
        return len(self._strikes)

    def duration(self, level: int) -> float:
        """How long the lockout after ``level`` earlier ones (in a row) lasts."""
        return min(self.lockout * 2.0 ** min(level, 64), max(self.lockout, LOCKOUT_CEILING))

    def locked(self, key: Hashable, now: float) -> bool:
        strikes = self._strikes.get(key)
        return strikes is not None and now < strikes.locked_until

    def fail(self, key: Hashable, now: float) -> bool:
        """Count a failure; True when this one starts a lockout."""
        strikes = self._strikes.pop(key, None)
        # Counting starts afresh once a lockout has ended, not only once the
        # period has: otherwise the failures after a lockout (count above the
        # threshold, still inside the period) would never lock again, and
        # guessing would be unlimited until the period ran out.
        if strikes is None:
            strikes = Strikes(since=now, count=0, locked_until=0.0)
        elif now >= strikes.locked_until and (strikes.locked_until > 0.0 or now - strikes.since > self.period):
            level = strikes.level if now < strikes.forgiven_at else 0
            strikes = Strikes(since=now, count=0, locked_until=0.0, level=level, forgiven_at=strikes.forgiven_at)
        strikes.count += 1
        started = strikes.count == self.threshold
        if started:
            length = self.duration(strikes.level)
            strikes.locked_until = now + length
            strikes.forgiven_at = strikes.locked_until + length
            strikes.level += 1
        self._strikes[key] = strikes
        if len(self._strikes) > self.capacity:
            del self._strikes[next(iter(self._strikes))]
        return started

    def remaining(self, key: Hashable, now: float) -> float:
        """Seconds until ``key``'s lockout ends (0 when not locked)."""
        strikes = self._strikes.get(key)
        return max(0.0, strikes.locked_until - now) if strikes is not None else 0.0

    def get(self, key: Hashable) -> Strikes | None:
        return self._strikes.get(key)

    def put(self, key: Hashable, strikes: Strikes) -> None:
        """Restore ``key``'s strikes (read back from a file)."""
        self._strikes.pop(key, None)
        self._strikes[key] = strikes
        if len(self._strikes) > self.capacity:
            del self._strikes[next(iter(self._strikes))]

    def items(self) -> list[tuple[Hashable, Strikes]]:
        return list(self._strikes.items())

    def forget(self, now: float) -> int:
        """Drop every key whose strikes no longer change what :meth:`fail` does; how many."""
        spent = [
            key for key, s in self._strikes.items()
            if now >= s.locked_until and now >= s.forgiven_at and (s.locked_until > 0.0 or now - s.since > self.period)
        ]
        for key in spent:
            del self._strikes[key]
        return len(spent)

    def succeed(self, key: Hashable) -> None:
        """A success clears the key's count and growth (but not a lockout in force)."""
        strikes = self._strikes.get(key)
        if strikes is not None and strikes.locked_until == 0.0:
            del self._strikes[key]

    def checks_per_day(self) -> int:
        """The most failures one day of non-stop guessing gets counted (none succeeding)."""
        elapsed, checks, level = 0.0, 0, 0
        while elapsed < 86400:
            checks += self.threshold
            elapsed += self.duration(level)
            level += 1
        return checks
