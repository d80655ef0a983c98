"""``spa serve`` running in a namespace, configured with the real CLI.

Used by ``spa demo`` and by the end-to-end tests. The config lives in a
private (0700) directory of its own, as on a real server: the worker,
running as nobody, manages with the state-directory descriptor it is handed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from spa.core.keys import ClientKey, load_client_key

from .netns import wait_until

SPA = [sys.executable, "-m", "spa"]


@dataclass
class Served:
    """A ``spa serve`` (once started) and the files around it.

    ``exec_argv`` wraps a command to run in the server's namespace; ``adopt``
    hands a started process to whoever kills it at teardown.
    """

    directory: Path
    exec_argv: Callable[[list[str]], list[str]]
    adopt: Callable[[subprocess.Popen[str]], None]
    server: str  # the address client key files name
    process: subprocess.Popen[str] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.directory / "serve.log"

    @property
    def config(self) -> Path:
        return self.directory / "spa.toml"

    def spa(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the spa CLI here (config work needs no network)."""
        result = subprocess.run([*SPA, *argv], capture_output=True, text=True, timeout=30, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"spa {' '.join(argv)} failed: {result.stderr.strip()}")
        return result

    def keygen(self, name: str, *extra: str) -> ClientKey:
        path = self.key_path(name)
        self.spa("keygen", name, "--config", str(self.config), "--server", self.server, "--out", str(path), *extra)
        return load_client_key(path)

    def key_path(self, name: str) -> Path:
        return self.directory / f"{name}.spakey"

    def edit(self, old: str, new: str) -> None:
        text = self.config.read_text()
        if old not in text:
            raise ValueError(f"{self.config} has no {old!r}")
        self.config.write_text(text.replace(old, new, 1))

    def start(self, timeout: float = 15, env: dict[str, str] | None = None) -> None:
        """Start ``spa serve`` (``env``: the whole environment, if not ours) and wait
        for its banner; the log is appended to, so a restart on the same
        directory waits for a banner after the old ones."""
        before = len(self.log())
        log = open(self.log_path, "a")  # noqa: SIM115 - the child holds its own copy
        self.process = subprocess.Popen(
            self.exec_argv([*SPA, "serve", "--config", str(self.config)]),
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, text=True, env=env,
        )
        log.close()
        self.adopt(self.process)
        process = self.process
        if not wait_until(lambda: "serving " in self.log()[before:] or process.poll() is not None, timeout):
            raise RuntimeError(f"spa serve did not start:\n{self.log()}")
        if process.poll() is not None:
            raise RuntimeError(f"spa serve exited {process.returncode}:\n{self.log()}")

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
        """The worker of the latest start (the log keeps earlier runs' banners too)."""
        for line in reversed(self.log().splitlines()):
            if line.startswith("serving ") and " worker " in line:
                return int(line.rsplit(" worker ", 1)[1].split()[0])
        raise RuntimeError(f"no worker pid in the log:\n{self.log()}")

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def configure(exec_argv: Callable[[list[str]], list[str]], adopt: Callable[[subprocess.Popen[str]], None],
              server: str, zone: str, protect: str = "tcp/22,tcp/2222", backend: str = "nftables",
              parent: Path | None = None) -> Served:
    """``spa init`` a config in a fresh private directory (inside ``parent`` if given, so
    whoever removes that removes this too): every carrier on, 3-second grants."""
    served = Served(Path(tempfile.mkdtemp(prefix="spa-demo-", dir=parent)), exec_argv, adopt, server)
    served.spa("init", "--dir", str(served.directory), "--protect", protect, "--zone", zone, "--backend", backend)
    served.edit("seconds = 30 ", "seconds = 3 ")
    return served
