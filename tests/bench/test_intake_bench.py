"""Bounded smoke run of intake.py: every phase delivers exactly what was sent.

Asserts correctness (counts, no drops when queued, junk refused by the
kernel), never speed; the figures live in docs/architecture.md ("Intake").
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from world import need_netns  # noqa: E402

SCRIPT = Path(__file__).with_name("intake.py")


@pytest.mark.bench
@pytest.mark.netns
def test_intake_benchmark_smoke() -> None:
    need_netns()
    result = subprocess.run([sys.executable, str(SCRIPT), "--count", "3000", "--json"],
                            capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    # intake.py itself asserts that every phase received what was sent.
    for name in ("queued_drain_per_s", "queued_drain_parse_per_s", "live_per_s", "sender_per_s"):
        assert figures[name] > 0, name
    assert figures["junk_sent"] == 750 and figures["junk_captured"] == 0
