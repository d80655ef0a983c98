"""Guessing one-time codes: how many a key gets checked, whatever the strategy.

Usage: python tests/bench/guessing.py [--days 30] [--json] [--out FILE]

Each strategy plays against the real ``spa.core.gate.Gate`` with the
default limits and a real ``FileGuesses`` (the wrong-code file the daemon
keeps), on a simulated clock, for ``--days``. Every guess is a random
6-digit code sent to one key; a guess is *checked* when the gate compares
it with the key's codes (a wrong code, or a hit), and refused unseen when
the key's budget or the source is locked. With ±1 TOTP step a checked guess
matches one of 3 codes, so the chance of a hit within the run is
1 - (1 - 3e-6) ** checked.

Strategies (what the outside review tried, and what beats a lockout):

- ``non-stop``: one source, a guess every second.
- ``paced``: 19 guesses per 600 s spread over 5 sources, just under the
  old per-key lockout threshold.
- ``many-sources``: a new (spoofed) source for every guess, one a second.
- ``restarts``: many-sources, and the worker restarts every 10 minutes
  and spa reloads every hour (a new Gate that reads the same file: what
  the daemon does).
- ``budget-timed``: the best a patient guesser can do: the first burst,
  then one guess exactly when the budget has grown by one.

The figures in docs/gate.md ("What the budget caps") come from a 30-day run.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from spa.core import otp  # noqa: E402
from spa.core.events import Accepted, Carrier, Form, Knock, OtpCode, Rejection, Request  # noqa: E402
from spa.core.gate import Gate, GateSettings  # noqa: E402
from spa.core.guesses import DAY, FileGuesses  # noqa: E402
from spa.core.keyring import Keyring  # noqa: E402
from spa.core.keys import KeyRecord  # noqa: E402
from spa.core.ledger import Ledger  # noqa: E402
from spa.core.policy import Policy  # noqa: E402

START = 1_760_000_000.0
PER_CHECK = 3 / 10**6  # a 6-digit guess against the 3 codes of ±1 TOTP step


@dataclass
class Run:
    """One strategy's outcome."""

    strategy: str
    days: float
    guesses: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)

    @property
    def checked(self) -> int:
        return self.outcomes["BAD_CODE"] + self.outcomes["Accepted"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "guesses": self.guesses,
            "checked": self.checked,
            "checked_per_day": round(self.checked / self.days, 2),
            "hit_chance": 1 - (1 - PER_CHECK) ** self.checked,
            "hits": self.outcomes["Accepted"],
            "outcomes": dict(self.outcomes),
        }


class Target:
    """The server side: one key enrolled for codes, the default limits, the daemon's files."""

    def __init__(self, directory: Path, settings: GateSettings) -> None:
        self.settings = settings
        self.directory = directory
        self.record = KeyRecord("alice", 7, Policy(open=(Request("tcp", 22),), allow_codes=True),
                                secret=bytes(32), totp_secret=otp.new_secret())
        self.keyring = Keyring(bytes(range(32)), [self.record])
        self.ledger = Ledger(retention=settings.time_window + 600)  # survives restarts, as the FileLedger does
        self.gate = self.restart(START)

    def restart(self, now: float) -> Gate:
        """A new worker: a new Gate that reads the wrong-code file back."""
        if hasattr(self, "gate"):
            self.gate.guesses.close()  # type: ignore[attr-defined]
        guesses = FileGuesses(self.directory / "guesses", self.settings.codes, now=now)
        self.gate = Gate(self.keyring, self.ledger, self.settings, guesses)
        return self.gate

    def close(self) -> None:
        self.gate.guesses.close()  # type: ignore[attr-defined]


Schedule = Iterator[tuple[float, int]]  # (time, source number) of each guess


def non_stop(days: float) -> Schedule:
    for second in range(int(days * DAY)):
        yield START + second, 1


def paced(days: float) -> Schedule:
    for window in range(int(days * DAY / 600)):
        for n in range(19):
            yield START + window * 600 + n * 30, n % 5 + 1


def many_sources(days: float) -> Schedule:
    for second in range(int(days * DAY)):
        yield START + second, second + 1


def budget_timed(settings: GateSettings) -> Callable[[float], Schedule]:
    def schedule(days: float) -> Schedule:
        for n in range(settings.otp_failures_per_key):
            yield START + n, n + 1
        interval = DAY / settings.otp_failures_per_key_per_day
        for n in range(1, int(days * DAY / interval) + 1):
            yield START + n * interval + 1, 1000 + n
    return schedule


def source(number: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(0x0A000000 + number % 2**24) if number < 2**24 else ipaddress.ip_address(number)


def play(name: str, schedule: Schedule, days: float, settings: GateSettings, seed: int,
         restart_every: float = 0.0, reload_every: float = 0.0) -> Run:
    rng = random.Random(seed)
    run = Run(name, days)
    with tempfile.TemporaryDirectory() as directory:
        target = Target(Path(directory), settings)
        restarted = reloaded = START
        for now, number in schedule:
            if restart_every and now - restarted >= restart_every:
                target.restart(now)
                restarted = now
            if reload_every and now - reloaded >= reload_every:
                target.restart(now)  # a reload starts a new worker too
                reloaded = now
            code = OtpCode("alice", f"{rng.randrange(10**6):06d}")
            decision = target.gate.decide(Knock(Carrier.DNS, Form.OTP, code, source(number), now))
            run.guesses += 1
            run.outcomes[decision.reason.name if isinstance(decision, Rejection) else type(decision).__name__] += 1
            if isinstance(decision, Accepted):
                target.ledger.prune(now)
        target.close()
    return run


def measure(days: float, seed: int = 1) -> dict[str, Any]:
    settings = GateSettings()
    runs = [
        play("non-stop", non_stop(days), days, settings, seed),
        play("paced", paced(days), days, settings, seed),
        play("many-sources", many_sources(days), days, settings, seed),
        play("restarts", many_sources(days), days, settings, seed, restart_every=600, reload_every=3600),
        play("budget-timed", budget_timed(settings)(days), days, settings, seed),
    ]
    return {
        "days": days,
        "limits": {
            "otp_failures_per_key": settings.otp_failures_per_key,
            "otp_failures_per_key_per_day": settings.otp_failures_per_key_per_day,
            "otp_failures_per_source": settings.otp_failures_per_source,
            "totp_steps": settings.totp_steps,
        },
        "cap": settings.codes.checks_in(days),
        "strategies": {run.strategy: run.as_dict() for run in runs},
    }


def table(results: dict[str, Any]) -> str:
    lines = [
        f"{results['days']:g} days, cap {results['cap']} checks a key (budget "
        f"{results['limits']['otp_failures_per_key']}, then {results['limits']['otp_failures_per_key_per_day']:g} a day)",
        f"{'strategy':<14}{'guesses':>10}{'checked':>9}{'per day':>9}{'hit chance':>12}",
    ]
    for name, figures in results["strategies"].items():
        lines.append(f"{name:<14}{figures['guesses']:>10}{figures['checked']:>9}{figures['checked_per_day']:>9.1f}"
                     f"{figures['hit_chance'] * 100:>11.3f}%")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = measure(args.days, args.seed)
    text = json.dumps(results, indent=2) if args.json else table(results)
    print(text)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
