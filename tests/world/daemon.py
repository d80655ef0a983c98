"""``spa serve`` running inside the world's server namespace, as a person would run it.

The config is made with ``spa init`` and ``spa keygen`` (the real CLI) in a
private (0700) directory of its own under /tmp, removed again afterwards: the
worker, running as nobody, must manage with the descriptor of its state
directory that it is handed, as on a real server under /root or /etc.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from spa.core.keys import ClientKey, load_client_key

from .netns import World, wait_until

SPA = [sys.executable, "-m", "spa"]
ZONE = "knock.test"


@dataclass
class Served:
    """A running ``spa serve`` and the files around it."""

    world: World
    directory: Path
    process: subprocess.Popen[str] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.directory / "serve.log"

    @property
    def config(self) -> Path:
        return self.directory / "spa.toml"

    def spa(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the spa CLI (outside the namespaces: config work needs no network)."""
        result = subprocess.run([*SPA, *argv], capture_output=True, text=True, timeout=30, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"spa {' '.join(argv)} failed: {result.stderr.strip()}")
        return result

    def keygen(self, name: str, *extra: str) -> ClientKey:
        path = self.directory / f"{name}.spakey"
        self.spa("keygen", name, "--config", str(self.config), "--server", "10.77.1.1", "--out", str(path), *extra)
        return load_client_key(path)

    def edit(self, old: str, new: str) -> None:
        text = self.config.read_text()
        assert old in text, old
        self.config.write_text(text.replace(old, new, 1))

    def start(self, timeout: float = 15) -> None:
        log = open(self.log_path, "a")  # noqa: SIM115 - the child holds it; closed in stop
        self.process = subprocess.Popen(
            self.world.server.exec_argv([*SPA, "serve", "--config", str(self.config)]),
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, text=True, cwd=Path(__file__).resolve().parents[2],
        )
        log.close()
        self.world.adopt(self.process)
        if not wait_until(lambda: "serving " in self.log() or self.process.poll() is not None, timeout):
            raise RuntimeError(f"spa serve did not start:\n{self.log()}")
        if self.process.poll() is not None:
            raise RuntimeError(f"spa serve exited {self.process.returncode}:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text()
        except FileNotFoundError:
            return ""

    def wait_log(self, text: str, timeout: float = 5) -> bool:
        return wait_until(lambda: text in self.log(), timeout)

    def signal(self, number: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, number)

    def stop(self, timeout: float = 10) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def worker_pid(self) -> int:
        for line in self.log().splitlines():
            if line.startswith("serving ") and " worker " in line:
                return int(line.rsplit(" worker ", 1)[1].split()[0])
        raise AssertionError(f"no worker pid in the log:\n{self.log()}")


def make_served(world: World, protect: str = "tcp/22,tcp/2222", backend: str = "nftables") -> Served:
    """``spa init`` a config for the world (every carrier on, 3-second grants)."""
    directory = Path(tempfile.mkdtemp(prefix="spa-e2e-"))
    served = Served(world, directory)
    served.spa("init", "--dir", str(directory), "--protect", protect, "--zone", ZONE, "--backend", backend)
    served.edit("seconds = 30 ", "seconds = 3 ")
    return served


def remove(served: Served) -> None:
    shutil.rmtree(served.directory, ignore_errors=True)
