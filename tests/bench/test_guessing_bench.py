"""Bounded guessing run in CI: no strategy gets more codes checked than the key's budget.

The 30-day run behind docs/gate.md ("What the budget caps") takes about a
minute and a half; this plays the same strategies for two simulated days and
asserts outcomes, never speed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import guessing  # noqa: E402

from spa.core.gate import GateSettings  # noqa: E402

DAYS = 2.0


@pytest.fixture(scope="module")
def results() -> dict:
    return guessing.measure(DAYS)


@pytest.mark.bench
def test_no_strategy_gets_more_checks_than_the_budget(results: dict) -> None:
    cap = results["cap"]
    assert cap == 20 + 2 * 10
    for name, figures in results["strategies"].items():
        assert 0 < figures["checked"] <= cap, (name, figures)
    # The review's strategy (19 per 600 s over 5 sources) got 2,736 a day under the old lockout.
    assert results["strategies"]["paced"]["guesses"] == 2 * 2736
    # Restarts and reloads forgive nothing: the same cap as without them.
    assert results["strategies"]["restarts"]["checked"] <= cap
    # The patient guesser reaches the cap exactly: the budget is what limits, not luck.
    assert results["strategies"]["budget-timed"]["checked"] == cap


@pytest.mark.bench
def test_the_defaults_keep_a_30_day_hit_under_a_thousandth() -> None:
    checks = GateSettings().codes.checks_in(30)
    assert 1 - (1 - guessing.PER_CHECK) ** checks <= 0.001, checks
