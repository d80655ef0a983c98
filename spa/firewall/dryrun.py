"""A backend that only says what it would do: for trying configs without root."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from spa.core.events import Grant, IPAddress, Request

from .base import LiveGrant, check_grant, host
from .settings import FirewallSettings

log = logging.getLogger(__name__)


class DryRunBackend:
    """Logs each grant and remembers it (with its deadline) for :meth:`live`.

    ``clock`` is injectable so tests can move time without sleeping.
    """

    def __init__(
        self, settings: FirewallSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._open: dict[tuple[IPAddress, Request], tuple[Grant, float]] = {}

    def install(self) -> None:
        log.info("dry run: would guard %s", ", ".join(str(r) for r in self.settings.protect))

    def grant(self, grant: Grant) -> None:
        check_grant(grant, self.settings.protect)
        single = self.settings.wants_single_use(grant.request, grant.single_use)
        address = host(grant.address)
        self._open[(address, grant.request)] = (grant, self._clock() + grant.seconds)
        log.info(
            "dry run: would grant %s to %s for %ds (%s via %s%s)",
            grant.request, address, grant.seconds, grant.key, grant.carrier.value,
            ", single use" if single else "",
        )

    def revoke(self, address: IPAddress, request: Request) -> None:
        self._open.pop((host(address), request), None)
        log.info("dry run: would revoke %s for %s", request, address)

    def live(self) -> list[LiveGrant]:
        now = self._clock()
        for where in [w for w, (_, until) in self._open.items() if until <= now]:
            del self._open[where]
        grants = [
            LiveGrant(
                address, request, until - now, grant.key,
                self.settings.wants_single_use(request, grant.single_use),
            )
            for (address, request), (grant, until) in self._open.items()
        ]
        return sorted(grants, key=lambda g: (g.seconds_left, str(g.address), g.request))

    def uninstall(self) -> None:
        self._open.clear()
        log.info("dry run: would remove spa's firewall tables")

    def damage(self) -> str | None:
        """Nothing is installed, so nothing can be damaged."""
        return None

    def repair(self) -> None:
        """Nothing to repair."""

    def close(self) -> None:
        self._open.clear()
