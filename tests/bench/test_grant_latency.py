"""Bounded smoke run of grant_latency.py: every method works and verifies.

Asserts correctness, not speed (speed depends on the machine; the figures
live in docs/benchmarks.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from world import need_netns  # noqa: E402

SCRIPT = Path(__file__).with_name("grant_latency.py")


@pytest.mark.bench
@pytest.mark.netns
def test_grant_latency_smoke() -> None:
    need_netns("nft", "iptables", "ipset", libraries=("nftables",))
    result = subprocess.run([sys.executable, str(SCRIPT), "--count", "40", "--json"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert set(figures) == {"nftables", "nftables-text", "nft-cli", "ipset", "iptables"}
    for name, row in figures.items():
        assert row["verified"], f"{name}: grants not all present after the run"
        assert 0 < row["median_ms"] <= row["p99_ms"]
