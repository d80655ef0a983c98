"""Bugs contained to the one event that hit them: counted, logged once, survived.

The worker and the supervisor each handle one event at a time: a captured
packet, a DNS query, a connection, a message from the worker, a signal.
If handling one of them raises an exception nobody expected, that event is
lost and nothing else: the loop goes on. Dying instead would hand every
sender a switch: a new worker is a new gate (lockouts and rate limits start
afresh), and a supervisor that gives up drops every grant.

A contained exception is counted under ``errors.unexpected`` (status.json,
``spa status``, the SIGUSR1 line; the test world fails any test that ends
with it above zero) and logged with its traceback the first time each
(event, exception type, raising line) is seen: a flood that keeps hitting
the same bug shows up as a count, not as a flood of log lines.
"""

from __future__ import annotations

import logging
from collections import Counter
from types import TracebackType

COUNTER = "errors.unexpected"
MAX_SITES = 64  # distinct (event, type, line) logged; past this, only counted

log = logging.getLogger("spa")


class Unexpected:
    """The one place a process reports an exception it contained."""

    def __init__(self, counts: Counter[str], process: str) -> None:
        self.counts = counts
        self.process = process
        self._seen: set[tuple[str, str, str, int]] = set()

    @property
    def count(self) -> int:
        return self.counts[COUNTER]

    def caught(self, event: str, problem: Exception) -> None:
        """Count ``problem`` (raised while handling ``event``); log it if it is new."""
        self.counts[COUNTER] += 1
        site = (event, type(problem).__name__, *_origin(problem.__traceback__))
        if site in self._seen or len(self._seen) >= MAX_SITES:
            return
        self._seen.add(site)
        log.error(
            f"{self.process}: unexpected {type(problem).__name__} handling {event}, which was dropped "
            f"(counted as {COUNTER}; this one is not logged again): {str(problem)[:200]!r}",
            exc_info=problem,
        )


def _origin(trace: TracebackType | None) -> tuple[str, int]:
    """Where an exception was raised: the innermost frame's file and line."""
    if trace is None:
        return "", 0
    while trace.tb_next is not None:
        trace = trace.tb_next
    return trace.tb_frame.f_code.co_filename, trace.tb_lineno
