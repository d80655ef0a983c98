"""Smoke run of the gate benchmark: bounded, asserts outcomes, never speed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gate as gate_bench  # noqa: E402


@pytest.mark.bench
def test_gate_benchmark_runs_and_accepts_only_valid_knocks() -> None:
    # measure() itself asserts that no junk was accepted and every valid knock was.
    results = gate_bench.measure(seconds=0.05)
    rates = {name: value for name, value in results.items() if name.endswith("_per_s")}
    assert len(rates) == 7 and all(value > 0 for value in rates.values())
