"""What the supervisor checks between packets: the guard is intact, the clock sane.

Someone (an admin's ``nft flush ruleset``, a firewall manager reloading its
own rules, an intruder) may delete or change spa's tables while spa runs;
the protected ports would then be open to all with nothing in the log. The
supervisor asks the backend for damage every second and on every nftables
change notification, puts the structures back, and says so. If they cannot
be put back, spa stops: serving knocks with the ports already open would
only hide the problem.

A wall clock that steps (NTP after a long drift, an admin, a VM resumed)
changes which tokens the gate accepts; the step is logged so that the
refusals that follow have an explanation next to them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from spa.firewall import Backend, FirewallError

log = logging.getLogger("spa")

CLOCK_STEP = 5.0  # seconds of wall-clock step worth a log line


def keep_guard(backend: Backend) -> bool:
    """Check spa's firewall structures and repair them; False if that failed."""
    try:
        damage = backend.damage()
    except FirewallError as problem:
        damage = str(problem)
    if damage is None:
        return True
    log.error(f"spa's firewall rules were removed or changed by someone else: {damage}; restoring them")
    try:
        backend.repair()
        still = backend.damage()
    except FirewallError as problem:
        still = str(problem)
    if still is not None:
        log.error(f"cannot restore spa's firewall rules ({still}); stopping rather than serve with the ports unguarded")
        return False
    lost = " (grants live until now were lost with the grant table)" if "grant" in damage else ""
    log.error(f"restored spa's firewall rules{lost}")
    return True


@dataclass
class ClockWatch:
    """Notices the wall clock moving against the monotonic clock.

    ``offset`` is wall minus monotonic at the last look; the two only drift
    apart by slewing (milliseconds) unless the wall clock is stepped or the
    host was suspended (the monotonic clock stops during suspend).
    """

    wall: Callable[[], float]
    monotonic: Callable[[], float]
    time_window: int
    offset: float | None = None

    def look(self) -> float | None:
        """The step since the last look, in seconds, if one is worth a log line."""
        offset = self.wall() - self.monotonic()
        previous, self.offset = self.offset, offset
        if previous is None or abs(offset - previous) < CLOCK_STEP:
            return None
        step = offset - previous
        # The monotonic clock stops while the host is suspended: a resume looks like a forward step.
        how = "forward" if step > 0 else "back"
        maybe = " (or the host was suspended)" if step > 0 else ""
        log.warning(
            f"the system clock stepped {how} by {abs(step):.0f} s{maybe}; "
            f"knocks are judged by the new time, so tokens more than {self.time_window} s from it are refused"
        )
        return step
