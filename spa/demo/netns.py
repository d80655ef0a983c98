"""Generic pieces for worlds made of network namespaces.

``run`` and ``wait_until`` are the two bounded primitives everything else is
built on (a command with a timeout, a poll with a deadline). ``Host`` is one
namespace and how to run things in it. ``Namespaces`` is the bookkeeping:
it creates namespaces under a tag unique to this process, starts and tracks
every process run inside them, writes per-namespace /etc/netns files, and
on :meth:`Namespaces.close` undoes all of it: safe after a partial build,
safe to call twice, and not interruptible half-way by Ctrl-C (a second
SIGINT waits until the cleanup is done, then raises as usual).
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

NETNS_ETC = Path("/etc/netns")  # `ip netns exec NAME` bind-mounts /etc/netns/NAME/* over /etc/*

_serial = itertools.count()


def run(argv: list[str], *, check: bool = True, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    """Run a command (argument list, no shell) with a timeout; raise with its stderr if it fails and ``check``."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                            stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``predicate`` until it is true (return True) or ``timeout`` seconds pass (return False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


@dataclass(frozen=True)
class Host:
    """One network namespace and its main addresses (``address6`` empty if it has none)."""

    netns: str
    address: str = ""
    address6: str = ""

    def exec_argv(self, argv: list[str]) -> list[str]:
        """``argv`` wrapped to run inside this namespace (``ip netns exec`` execs: same pid)."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def run(self, argv: list[str], *, check: bool = True, timeout: float = 10) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside this namespace (see :func:`run`)."""
        return run(self.exec_argv(argv), check=check, timeout=timeout)


@contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back while the block runs (main thread only).

    Cleanup that a Ctrl-C cuts in half leaves namespaces behind; with the
    signals blocked, one that arrives meanwhile is delivered right after the
    block, so the program still stops, only with everything removed first.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def kill(process: subprocess.Popen[Any], timeout: float = 10) -> None:
    """SIGKILL ``process`` by its pid (it is ours) and reap it; close our ends of its pipes."""
    if process.poll() is None:
        try:
            os.kill(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass  # unkillable only in uninterruptible sleep; nothing more we can do
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass


@dataclass
class Namespaces:
    """Namespaces, /etc/netns files and processes made under one unique tag, and their removal.

    Names are ``<tag>-<role>``; the tag carries the pid and a counter, so
    parallel runs and several worlds in one process never collide. Every
    resource is recorded the moment it exists, so :meth:`close` after a
    failure half-way through a build removes exactly what was made.
    """

    prefix: str = "spa"
    tag: str = ""
    made: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)
    etc_dirs: list[Path] = field(default_factory=list)
    made_netns_etc: bool = False

    def __post_init__(self) -> None:
        if not self.tag:
            self.tag = f"{self.prefix}{os.getpid()}x{next(_serial)}"

    def name(self, role: str) -> str:
        return f"{self.tag}-{role}"

    def add(self, host: Host | str) -> Host:
        """Create ``host``'s namespace (or the one for the role ``host`` names) with its loopback up.

        A :class:`Host` given must be named by :meth:`name`, so that it carries the tag.
        """
        if isinstance(host, str):
            host = Host(self.name(host))
        if not host.netns.startswith(f"{self.tag}-"):
            raise ValueError(f"{host.netns!r} does not carry this run's tag {self.tag!r}")
        run(["ip", "netns", "add", host.netns])
        self.made.append(host.netns)
        run(["ip", "-n", host.netns, "link", "set", "lo", "up"])
        return host

    def etc_file(self, host: Host, name: str, text: str) -> Path:
        """Write /etc/netns/<ns>/<name>, which ``ip netns exec`` shows as /etc/<name> inside ``host``."""
        if not NETNS_ETC.exists():
            NETNS_ETC.mkdir(mode=0o755)
            self.made_netns_etc = True
        directory = NETNS_ETC / host.netns
        if directory not in self.etc_dirs:
            directory.mkdir(mode=0o755)
            self.etc_dirs.append(directory)
        path = directory / name
        path.write_text(text)
        return path

    def popen(self, host: Host, argv: list[str], log_path: Path | None = None, *,
              stdin: int | IO[Any] | None = subprocess.DEVNULL,
              stdout: int | IO[Any] | None = None, text: bool = True,
              cwd: Path | None = None) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``host``, tracked until :meth:`close`.

        Output goes to ``log_path`` (appended; stdout and stderr) if given,
        else to ``stdout`` if given, else nowhere. The child gets a session
        of its own: a Ctrl-C in the terminal reaches us, and we end it.
        """
        log: IO[Any] | None = None
        if log_path is not None:
            log = open(log_path, "ab")  # noqa: SIM115 - the child holds its own copy
            out: int | IO[Any] | None = log
            err: int | IO[Any] | None = log
        else:
            out = stdout if stdout is not None else subprocess.DEVNULL
            err = subprocess.DEVNULL
        try:
            process = subprocess.Popen(host.exec_argv(argv), stdin=stdin, stdout=out, stderr=err, text=text,
                                       cwd=cwd, start_new_session=True)
        finally:
            if log is not None:
                log.close()
        self.processes.append(process)
        return process

    def adopt(self, process: subprocess.Popen[Any]) -> None:
        """Kill ``process`` (started elsewhere, by us) when the world closes."""
        self.processes.append(process)

    def kill(self, process: subprocess.Popen[Any]) -> None:
        """Stop one tracked process now (SIGKILL by pid, then reap)."""
        kill(process)
        if process in self.processes:
            self.processes.remove(process)

    def close(self) -> None:
        """Kill every process, delete every namespace and /etc/netns entry made. Idempotent."""
        with sigint_deferred():
            while self.processes:
                kill(self.processes.pop())
            # Anything still inside our namespaces descends from what we
            # started (an sshd session, a helper a scenario forgot): a
            # namespace lives on, invisible, while a process is in it.
            for name in self.made:
                listed = run(["ip", "netns", "pids", name], check=False)
                for word in listed.stdout.split():
                    try:
                        os.kill(int(word), signal.SIGKILL)
                    except (ValueError, ProcessLookupError):
                        pass
            while self.made:
                run(["ip", "netns", "del", self.made.pop()], check=False)
            while self.etc_dirs:
                directory = self.etc_dirs.pop()
                for path in directory.glob("*"):
                    path.unlink(missing_ok=True)
                try:
                    directory.rmdir()
                except FileNotFoundError:
                    pass
            if self.made_netns_etc:
                try:
                    NETNS_ETC.rmdir()
                except OSError:
                    pass  # someone else put something there meanwhile: theirs to keep
                self.made_netns_etc = False
