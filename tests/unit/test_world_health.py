"""The test world's health check: a daemon that contained an unexpected exception
fails the test that ran it (tests/world/daemon.py remove), even if the test passed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from world.daemon import remove, unexpected_errors  # noqa: E402

from spa.daemon.contain import COUNTER  # noqa: E402
from spa.demo.served import Served  # noqa: E402


def served_with(tmp_path: Path, counts: dict[str, int] | None, log: str) -> Served:
    served = Served(tmp_path / "srv", lambda argv: argv, lambda process: None, "192.0.2.1")
    (served.directory / "state").mkdir(parents=True)
    if counts is not None:
        (served.directory / "state" / "status.json").write_text(json.dumps({"counts": counts}))
    served.log_path.write_text(log)
    return served


def test_a_clean_daemon_passes_and_its_files_go(tmp_path: Path) -> None:
    served = served_with(tmp_path, {COUNTER: 0, "junk": 5}, "serving icmp; worker 7\nstopping\n")
    assert unexpected_errors(served) == []
    remove(served)
    assert not served.directory.exists()


def test_a_counter_above_zero_fails_the_test(tmp_path: Path) -> None:
    served = served_with(tmp_path, {COUNTER: 2}, "serving icmp; worker 7\n")
    with pytest.raises(AssertionError, match=f"status.json: {COUNTER} = 2"):
        remove(served)
    assert not served.directory.exists()  # removed all the same


def test_a_logged_contained_exception_fails_the_test_even_before_the_counters_are_written(tmp_path: Path) -> None:
    line = f"worker: unexpected KeyError handling a DNS-over-TCP client, which was dropped (counted as {COUNTER}; ...)"
    served = served_with(tmp_path, None, f"serving icmp; worker 7\n{line}\nTraceback ...\n")
    with pytest.raises(AssertionError, match="unexpected KeyError"):
        remove(served)


def test_the_log_line_the_check_looks_for_is_the_one_spa_writes(tmp_path: Path) -> None:
    """The marker is read from the real Unexpected, in a process of its own (logging set up as spa serve does)."""
    script = (
        "import logging, sys; from collections import Counter; from spa.daemon.contain import Unexpected\n"
        "logging.basicConfig(stream=sys.stdout, format='%(message)s')\n"
        "try:\n    {}['x']\nexcept KeyError as e:\n    Unexpected(Counter(), 'worker').caught('an event', e)\n"
    )
    log = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=30).stdout
    served = served_with(tmp_path, {COUNTER: 0}, log)
    assert len(unexpected_errors(served)) == 1
