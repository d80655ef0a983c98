"""Bounded smoke run of compare.py: spa, fwknopd (pcap and -U) and knockd all open, every figure is produced.

Asserts only correctness (each daemon opened its port for each knock, the
junk was sent, /proc figures were read), never a speed; the figures live in
docs/benchmarks.md ("Side by side: spa, fwknopd, knockd").
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from world import need_netns  # noqa: E402

SCRIPT = Path(__file__).with_name("compare.py")
TARGETS = {"icmp", "dns", "udp", "sequence", "fixed", "fwknopd", "fwknopd -U", "knockd"}


@pytest.mark.bench
@pytest.mark.netns
@pytest.mark.timeout(60)
def test_compare_benchmark_smoke(tmp_path: Path) -> None:
    need_netns("nft", "iptables", "ping", "dig", "ss", "fwknopd", "fwknop", "knockd", "knock",
               libraries=("nftables",))
    out = tmp_path / "compare.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--count", "2", "--rates", "300", "--junk-knocks", "2",
         "--spacing-ms", "20", "--max-minutes", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=55, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())

    assert set(figures["knock_to_open"]) == TARGETS
    for target, row in figures["knock_to_open"].items():
        assert row["opened"] == row["knocks"] == 2, f"{target}: not every knock opened its port"
        assert 0 < row["median_ms"] <= row["p99_ms"], target
        assert row["wire_median_ms"] is not None, f"{target}: the knock was not seen leaving the client"

    assert set(figures["under_junk"]) == {"spa", "fwknopd", "fwknopd -U"}
    for name, rows in figures["under_junk"].items():
        [row] = rows
        assert row["junk_sent"] > 0, name
        assert row["knocks"] == 2, name
        # A light flood: every daemon still opens for each valid knock (how fast is not asserted).
        assert row["opened"] == 2, (name, row)
        assert row["daemon_cpu_s"] >= 0 and row["peak_rss_mb"] > 0, name
    assert all(value > 0 for value in figures["peak_rss_mb"].values()), figures["peak_rss_mb"]
