"""knockd-style backend: run a start command, and a stop command later.

For firewalls spa has no backend for. Templates are argv lists run without a
shell; ``%IP%``, ``%PORT%``, ``%PROTO%``, ``%SECONDS%`` and ``%KEY%`` are
replaced inside each argument. The stop command runs ``seconds`` after the
grant from a timer in this process, so **a killed spa never runs it**: write
start commands whose effect expires by itself (an nft set element or ipset
member with ``timeout %SECONDS%``), and treat the stop command as tidying.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from spa.core.events import Grant, IPAddress, Request

from .base import FirewallError, LiveGrant, check_grant, host
from .nft_render import who
from .settings import FirewallSettings

log = logging.getLogger(__name__)

Runner = Callable[[Sequence[str]], None]


def substitute(template: Sequence[str], values: dict[str, str]) -> list[str]:
    """Fill placeholders in each argument; arguments never split or merge."""
    argv = []
    for part in template:
        for placeholder, value in values.items():
            part = part.replace(placeholder, value)
        argv.append(part)
    return argv


def placeholders(address: IPAddress, request: Request, seconds: int, key: str) -> dict[str, str]:
    return {
        "%IP%": str(host(address)),
        "%PORT%": str(request.port),
        "%PROTO%": request.proto,
        "%SECONDS%": str(seconds),
        # The key goes through the same safe alphabet as nft comments.
        "%KEY%": who(key, "x").rsplit("/", 1)[0],
    }


def run_argv(argv: Sequence[str]) -> None:
    """Run one command (no shell), failing loudly with its first error line."""
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise FirewallError(f"command {argv[0]!r} failed: {error}") from error
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise FirewallError(
            f"command {argv[0]!r} exited {result.returncode}: {lines[0] if lines else ''}"
        )


@dataclass(frozen=True)
class _Open:
    grant: Grant
    until: float  # time.monotonic() deadline
    timer: threading.Timer


class CommandBackend:
    """Start/stop commands with an in-process timer per grant."""

    def __init__(self, settings: FirewallSettings, runner: Runner = run_argv) -> None:
        self.settings = settings
        self._runner = runner
        self._lock = threading.Lock()
        self._open: dict[tuple[IPAddress, Request], _Open] = {}

    def install(self) -> None:
        """Nothing to create: closing the ports is the host firewall's job here
        (``spa firewall install --output`` renders an nft guard for it)."""

    def grant(self, grant: Grant) -> None:
        check_grant(grant, self.settings.protect)
        if self.settings.wants_single_use(grant.request, grant.single_use):
            raise FirewallError("the command backend cannot do single-use grants; use nftables")
        values = placeholders(grant.address, grant.request, grant.seconds, grant.key)
        self._runner(substitute(self.settings.start_command, values))
        where = (host(grant.address), grant.request)
        # A renewal replaces the pending stop with one at the new deadline.
        timer = threading.Timer(grant.seconds, self._expire, args=(where, grant))
        timer.daemon = True
        with self._lock:
            previous = self._open.pop(where, None)
            self._open[where] = _Open(grant, time.monotonic() + grant.seconds, timer)
        if previous:
            previous.timer.cancel()
        timer.start()
        log.info("ran start command for %s %s (%s)", where[0], grant.request, grant.key)

    def _expire(self, where: tuple[IPAddress, Request], grant: Grant) -> None:
        with self._lock:
            current = self._open.get(where)
            if current is None or current.grant is not grant:
                return  # renewed or revoked meanwhile
            del self._open[where]
        self._stop(grant)

    def _stop(self, grant: Grant) -> None:
        if not self.settings.stop_command:
            return
        values = placeholders(grant.address, grant.request, grant.seconds, grant.key)
        try:
            self._runner(substitute(self.settings.stop_command, values))
        except FirewallError as error:  # a timer thread has nobody to raise to
            log.error("stop command for %s %s failed: %s", grant.address, grant.request, error)

    def revoke(self, address: IPAddress, request: Request) -> None:
        with self._lock:
            entry = self._open.pop((host(address), request), None)
        if entry:
            entry.timer.cancel()
            self._stop(entry.grant)

    def live(self) -> list[LiveGrant]:
        now = time.monotonic()
        with self._lock:
            entries = list(self._open.values())
        grants = [
            LiveGrant(host(e.grant.address), e.grant.request, max(0.0, e.until - now),
                      e.grant.key)
            for e in entries
        ]
        return sorted(grants, key=lambda g: (g.seconds_left, str(g.address), g.request))

    def uninstall(self) -> None:
        """Nothing was installed."""

    def damage(self) -> str | None:
        """spa installs nothing here (the host firewall guards), so nothing to check."""
        return None

    def repair(self) -> None:
        """Nothing to repair."""

    def close(self) -> None:
        """Orderly shutdown: run the stop command for every grant still open."""
        with self._lock:
            entries = list(self._open.values())
            self._open.clear()
        for entry in entries:
            entry.timer.cancel()
            self._stop(entry.grant)
