"""Bounded coverage-guided fuzzing of every target, and the seed corpus checked against the gate.

Each harness runs in its own process (atheris/libFuzzer), bounded by a
number of runs and a time limit, starting from the committed corpus. An
uncaught exception in spa is a crash: libFuzzer exits non-zero and writes
the input to the artifact directory, whose path the failure message gives.
New inputs the fuzzer finds go to a temporary directory, never into the
committed corpus. Longer campaigns: docs/fuzzing.md.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

TARGETS = ("dns", "icmp", "udp", "sequence", "config")
RUNS = 500_000  # whichever comes first: this many inputs, or SECONDS
SECONDS = 8


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target_runs_without_a_crash(target: str, tmp_path: Path) -> None:
    found, artifacts = tmp_path / "found", tmp_path / "artifacts"
    found.mkdir()
    artifacts.mkdir()
    command = [sys.executable, str(HERE / f"fuzz_{target}.py"), str(found), str(HERE / "corpus" / target),
               f"-runs={RUNS}", f"-max_total_time={SECONDS}", f"-artifact_prefix={artifacts}/",
               "-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"]
    # TMPDIR: whatever the harness leaves in a temporary directory goes with tmp_path.
    result = subprocess.run(command, capture_output=True, text=True, timeout=SECONDS * 10 + 60, check=False,
                            env={**os.environ, "TMPDIR": str(tmp_path)})
    log = result.stderr
    seed = re.search(r"Seed: (\d+)", log)
    crashes = sorted(p.name for p in artifacts.iterdir())
    assert result.returncode == 0 and not crashes, (
        f"fuzz_{target} crashed (seed {seed.group(1) if seed else '?'}; inputs {crashes} in {artifacts}):\n"
        + log[-4000:]
    )
    done = re.search(r"Done (\d+) runs", log)
    assert done and int(done.group(1)) > 100, log[-2000:]
    # The whole committed corpus was read: a seed that no longer loads is a broken seed.
    seeds = len(list((HERE / "corpus" / target).iterdir()))
    assert re.search(rf"INFO: +{seeds} files found in .*corpus/{target}", log), log[:3000]


def _accepted(decision: object) -> bool:
    from spa.core.events import Accepted

    return isinstance(decision, Accepted)


def test_seed_corpus_holds_knocks_the_gate_accepts() -> None:
    # The seeds start the fuzzer on the paths real knocks take; if the keys or
    # formats drift, make_corpus.py must be run again (and this says so).
    import harness

    corpus = HERE / "corpus"
    accepted: list[str] = []
    for path in sorted((corpus / "dns").iterdir()):
        if path.name.endswith(("-label", "-label-0x20", "-address")):
            worker = harness.worker()
            query = worker.dns_query(path.read_bytes())
            assert query.label is not None, path.name
            assert _accepted(worker.label(query.label, harness.CLIENT, harness.NOW)), path.name
            accepted.append(path.name)
    for path in sorted((corpus / "icmp").iterdir()):
        data = path.read_bytes()
        if path.name.startswith("ping") and path.name != "ping-short":
            packet = harness.echo(data[1:], 4 if data[0] & 1 else 6)
            assert _accepted(harness.worker().packet(packet, harness.NOW)), path.name
            accepted.append(path.name)
    for path in sorted((corpus / "udp").iterdir()):
        if not path.name.startswith(("datagram-", "signed-", "body-")):
            continue
        data = path.read_bytes()
        mode = (data[0] & 0x7F) % 3
        payload = data[1:] if mode == 0 else harness.seal_body(data[1:], mode - 1, bool(data[0] & 0x80))
        decision = harness.worker().packet(harness.udp(harness.UDP_PORT, payload), harness.NOW)
        # Signed bodies carry a zero signature: past the AEAD, refused by Ed25519.
        assert _accepted(decision) != path.name.startswith("signed-body"), (path.name, decision)
        accepted.append(path.name)
    for path in sorted((corpus / "sequence").iterdir()):
        if path.name.startswith("crash-"):
            continue
        decisions = harness.play_sequence(harness.worker(), path.read_bytes())
        assert any(_accepted(d) for d in decisions), path.name
        accepted.append(path.name)
    assert len(accepted) >= 34, accepted
