"""Bounded forgery run in CI: no forged token of any format is accepted.

Code guessing has its own bench: test_guessing_bench.py.

The full run (10 million random and mutated tokens per format) takes
several minutes on 2 cores, more than CI's budget; its command and figures
are in docs/benchmarks.md ("Forgery"). This runs the same code on a
smaller count and asserts outcomes, never speed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import forgery  # noqa: E402

COUNT = 200_000  # tokens per format, random + mutated + insider forgeries
BYTE_FORMATS = ("compact", "extended4", "extended6", "datagram-aead", "datagram-signed")


@pytest.fixture(scope="module")
def results() -> dict:
    return forgery.measure(COUNT, seconds=60, workers=min(2, os.cpu_count() or 1))


@pytest.mark.bench
def test_no_forged_token_of_any_format_is_accepted(results: dict) -> None:
    assert set(results["formats"]) == set(forgery.FORMATS)
    for fmt, figures in results["formats"].items():
        assert figures["accepted"] == 0, (fmt, figures)
        # Refused for what they are, never for their rate (the limits are out of reach).
        assert "RATE_LIMITED" not in figures["outcomes"], (fmt, figures)
        assert figures["tried"]["random"] > 0 and figures["tried"]["mutated"] > 0, fmt
        assert figures["total"] == sum(figures["outcomes"].values()), fmt


@pytest.mark.bench
def test_insider_forgeries_reach_the_authenticator(results: dict) -> None:
    # A token with the right plaintext under O is refused only by its MAC, AEAD
    # tag or signature: so the expensive check really ran, as often as forged.
    for fmt in (*BYTE_FORMATS, "dns-label", "icmp-ping"):
        figures = results["formats"][fmt]
        assert figures["outcomes"].get("BAD_MAC", 0) >= figures["tried"]["forged"] > 0, (fmt, figures)
