"""The benchmarks' side of the C junk sender (tests/bench/junk.c, built to build/junk).

``scripts/setup.sh`` compiles it; a bench that needs it and finds it
missing, or older than its source, stops with a message that says so
rather than quietly measuring something slower. :class:`Junk` runs one
sender inside a namespace host and reads its two JSON lines (ready, and
what it sent); the sender bounds itself in packets and seconds, and is
also stopped by pid (SIGTERM) when the bench is done with it.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "tests" / "bench" / "junk.c"
BINARY = REPO / "build" / "junk"
MAX_SECONDS = 600.0  # the sender's own cap (junk.c MAX_SECONDS)


class JunkMissing(RuntimeError):
    """build/junk is absent or stale: run scripts/setup.sh."""


def binary() -> Path:
    """build/junk, checked present and no older than junk.c."""
    if not BINARY.exists():
        raise JunkMissing(f"{BINARY} is missing: run scripts/setup.sh (or: gcc -O2 -Wall -o build/junk {SOURCE})")
    if SOURCE.stat().st_mtime > BINARY.stat().st_mtime:
        raise JunkMissing(f"{BINARY} is older than {SOURCE}: run scripts/setup.sh to rebuild it")
    return BINARY


def compile_to(path: Path) -> Path:
    """Compile junk.c to ``path`` (the smoke test builds its own copy)."""
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", str(path), str(SOURCE)],
                   check=True, capture_output=True, text=True, timeout=120)
    return path


@dataclass(frozen=True)
class Flood:
    """What to send: ``kinds`` as junk.c takes them (``spa:62201``, ``icmp``, ...)."""

    dest: str
    kinds: tuple[str, ...]
    rate: int  # packets/s; 0 is as fast as the sender can
    seconds: float
    count: int
    spoof: str | None = None  # PREFIX/LEN
    sources: int | None = None
    zone: str | None = None
    size: int | None = None

    def argv(self, program: Path) -> list[str]:
        argv = [str(program), "--dest", self.dest, "--rate", str(self.rate),
                "--seconds", f"{min(self.seconds, MAX_SECONDS):g}", "--count", str(self.count)]
        for kind in self.kinds:
            argv += ["--kind", kind]
        for option, value in (("--spoof", self.spoof), ("--sources", self.sources), ("--zone", self.zone),
                              ("--size", self.size)):
            if value is not None:
                argv += [option, str(value)]
        return argv


class Junk:
    """One running sender (in ``host``'s namespace, killed with ``world`` if still running)."""

    def __init__(self, world: Any, host: Any, flood: Flood, program: Path | None = None) -> None:
        self.flood = flood
        self.process = subprocess.Popen(host.exec_argv(flood.argv(program or binary())), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        world.adopt(self.process)
        self.selector = selectors.DefaultSelector()
        assert self.process.stdout is not None
        self.selector.register(self.process.stdout, selectors.EVENT_READ)
        if not self._line(15).get("ready"):
            raise RuntimeError("the junk sender did not start")

    def running(self) -> bool:
        return self.process.poll() is None

    def finish(self, timeout: float | None = None) -> dict[str, Any]:
        """Stop it now (SIGTERM, by pid) unless ``timeout`` is given to let it end by itself; its tally."""
        if timeout is None and self.running():
            os.kill(self.process.pid, signal.SIGTERM)
        wait = 30.0 if timeout is None else timeout
        result = self._line(wait)
        self.process.wait(10)
        self.selector.close()
        return result

    def _line(self, timeout: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        if not self.selector.select(timeout):
            raise TimeoutError(f"junk sender {self.process.pid} silent for {timeout} s")
        line = self.process.stdout.readline()
        if not line:
            assert self.process.stderr is not None
            self.process.wait(10)
            raise RuntimeError(f"junk sender exited {self.process.returncode}: {self.process.stderr.read().strip()}")
        return dict(json.loads(line))
