"""One log line per decision, readable in the journal. Pure formatting.

Junk (Reason.MALFORMED) is counted, not logged one line each: a flood of
random packets must not become a flood of journal lines. Duplicates (ping
repeats, resolver retries) are counted too: they are not new decisions.
"""

from __future__ import annotations

from spa.core.events import Accepted, Decision, Duplicate, Reason, Rejection


def describe(decision: Decision) -> str | None:
    """The log line for ``decision``, or None for ones that are only counted."""
    if isinstance(decision, Accepted):
        opened = ", ".join(f"{g.request}" for g in decision.grants)
        first = decision.grants[0]
        once = " (single use)" if first.single_use else ""
        via = f" from {decision.source}" if decision.source != first.address else ""
        return (
            f"accepted {decision.key} via {decision.carrier.value}{via}: "
            f"{first.address} {opened} for {first.seconds} s{once}"
        )
    if isinstance(decision, Duplicate):
        return None
    if decision.reason == Reason.MALFORMED:
        return None
    who = f" key {decision.key}" if decision.key else ""
    detail = f" ({decision.detail})" if decision.detail else ""
    return f"rejected{who} from {decision.source} via {decision.carrier.value}: {decision.reason.value}{detail}"


def most_telling(rejections: list[Rejection]) -> Rejection:
    """Of several candidate readings of one packet, the rejection worth logging.

    A ping pattern is tried in two layouts; one reading is junk by design,
    so any reason other than "malformed" says more about what happened.
    """
    for rejection in rejections:
        if rejection.reason != Reason.MALFORMED:
            return rejection
    return rejections[0]
