"""UDP datagrams (single packet authorisation) to knocks.

The whole UDP payload is one SPA datagram (docs/protocol.md, "SPA
datagram"). This decoder only checks the length, so the daemon drops
obvious junk (DNS probes, scanners' empty packets, oversized floods)
without building a Knock; the gate does everything else.
"""

from __future__ import annotations

from spa.core import datagram
from spa.core.events import Carrier, Form, IPAddress, Knock

# The smallest body: mode (1) | seconds (2) | n (1) | one proto/port (3).
SMALLEST_BODY = 1 + 2 + 1 + 3
MIN_SIZE = datagram.HEADER + SMALLEST_BODY + datagram.TAG
MAX_SIZE = datagram.MAX_SIZE


def knock(payload: bytes, source: IPAddress, received: float) -> Knock | None:
    """A DATAGRAM knock for a payload of plausible size, else None."""
    if not MIN_SIZE <= len(payload) <= MAX_SIZE:
        return None
    return Knock(Carrier.UDP, Form.DATAGRAM, bytes(payload), source, received)
