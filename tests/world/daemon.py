"""``spa serve`` in the small test world (server, alice, bob): spa.demo.served,
with this world's server address and zone.

:func:`remove` also fails the test whose daemon contained an unexpected
exception (spa/daemon/contain.py): such a bug cost one event only, so the
test itself may well pass, and only this check makes the suite notice it.
"""

from __future__ import annotations

import json
from pathlib import Path

from spa.daemon.contain import COUNTER
from spa.demo.served import Served, configure

from .netns import World

__all__ = ["ZONE", "Served", "make_served", "remove", "unexpected_errors"]

ZONE = "knock.test"
SERVER = "10.77.1.1"
LOGGED = f"counted as {COUNTER}"  # in every line that reports a contained exception


def make_served(world: World, protect: str = "tcp/22,tcp/2222", backend: str = "nftables") -> Served:
    """``spa init`` a config for the world (every carrier on, 3-second grants), not yet serving."""
    return configure(world.server.exec_argv, world.adopt, SERVER, ZONE, protect, backend)


def unexpected_errors(served: Served) -> list[str]:
    """Evidence that the daemon contained an unexpected exception: the log lines that
    reported one, and the counter in status.json if it is above zero. Empty: none."""
    evidence = [line for line in served.log().splitlines() if LOGGED in line]
    try:
        counts = json.loads((served.directory / "state" / "status.json").read_text()).get("counts", {})
    except (OSError, ValueError):
        counts = {}
    if counts.get(COUNTER, 0):
        evidence.append(f"status.json: {COUNTER} = {counts[COUNTER]}")
    return evidence


def remove(served: Served) -> None:
    """Remove the daemon's files; fail if it contained an unexpected exception."""
    try:
        evidence = unexpected_errors(served)
        if evidence:
            raise AssertionError(f"spa serve hit a bug it survived ({COUNTER} above zero):\n"
                                 + "\n".join(evidence) + "\n--- log ---\n" + served.log())
    finally:
        served.remove()


def alive(pid: int) -> bool:
    """Running: not gone, and not a zombie waiting for its (new) parent to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"
