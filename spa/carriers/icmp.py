"""ICMP and ICMPv6 echo requests (``ping -p``) to candidate knocks.

``ping -p <hex>`` repeats a pattern of at most 16 bytes through the echo
data, after a timestamp the ping program writes itself. Two layouts exist
(docs/carriers.md, "ICMP"), for data byte ``k`` and pattern ``pat``:

- Linux iputils, GNU inetutils, Android: a 16-byte timestamp at data[0:16]
  and ``data[k] = pat[k mod len(pat)]``, so data[16:32] holds the pattern.
- FreeBSD, macOS: an 8-byte timestamp and ``data[k] = pat[(k - 8) mod
  len(pat)]``, so data[16:32] holds the pattern rotated by 8.

The packet says neither which program sent it nor how long the pattern
was, so :func:`knocks` reads data[16:] both ways and offers the readings as
candidates, most likely first; the gate decides which (if any) is real.
A 16-byte compact token always yields two candidates (junk too: only the
gate can tell a token from noise, and it does so with one AES block). A
one-time-code pattern (5, 6 or 7 bytes) is offered only when data[16:]
repeats with that period and the bytes parse as a pattern.
"""

from __future__ import annotations

from spa.core import compact, otp
from spa.core.events import Carrier, Form, IPAddress, Knock

TIMESTAMP = 16  # Linux's struct timeval; nothing before this is pattern in every layout
BSD_OFFSET = 8  # FreeBSD/macOS: 8-byte timestamp, pattern from data[8]
MIN_DATA = TIMESTAMP + compact.SIZE  # `ping -s 32`: the smallest size carrying a whole token
OTP_PERIODS = (5, 6, 7)  # otp.parse_pattern sizes: key id (2) + 6, 8 or 10 BCD digits
SCAN = 128  # bytes of data[16:] examined: enough evidence, bounded cost for jumbo pings
MAX_CANDIDATES = 4


def knocks(data: bytes, source: IPAddress, received: float) -> tuple[Knock, ...]:
    """Candidate knocks in echo ``data`` (the bytes after the 8-byte ICMP header).

    Most likely first; the caller tries each with the gate and stops at the
    first that is not a Rejection (a Duplicate is the same ping repeated).
    Returns () for data shorter than 32 bytes. Never raises.
    """
    if len(data) < MIN_DATA:
        return ()
    head = bytes(data[: TIMESTAMP + SCAN])  # also copes with a memoryview of a capture buffer
    tail = head[TIMESTAMP:]
    found: list[Knock] = []
    period = _otp_period(tail)
    if period is not None:
        # A token from AES never repeats with period 5-7, so a pattern that
        # does and parses is almost surely a typed code: try it first.
        for offset in _phases(head, period):
            code = otp.parse_pattern(_unrotate(tail, period, offset))
            if code is not None:
                knock = Knock(Carrier.ICMP, Form.OTP, code, source, received)
                if knock not in found:
                    found.append(knock)
    for offset in _phases(head, compact.SIZE):
        knock = Knock(Carrier.ICMP, Form.COMPACT, _unrotate(tail, compact.SIZE, offset), source, received)
        if knock not in found:  # constant data reads the same in both phases
            found.append(knock)
    return tuple(found[:MAX_CANDIDATES])


def _otp_period(tail: bytes) -> int | None:
    """The smallest of 5, 6, 7 with which ``tail`` repeats, over at least two periods.

    A tail that repeats with two of them is constant (Fine and Wilf: periods
    p and q over p + q - 1 bytes imply period gcd(p, q) = 1), so the smallest
    is as good a guess as any and keeps a one-byte fill from offering three
    codes per ping (each wrong one would count towards a lockout).
    """
    for period in OTP_PERIODS:
        if len(tail) >= 2 * period and tail[period:] == tail[:-period]:
            return period
    return None


def _phases(head: bytes, period: int) -> tuple[int, int]:
    """Pattern offsets to read, the likelier first: Linux (0) or BSD (8).

    In the BSD layout data[8:16] is already pattern, so it repeats with the
    period; in the Linux layout it is the timestamp's microseconds (little
    endian, so its high bytes are zero), which does not.
    """
    window = head[BSD_OFFSET : TIMESTAMP + period]
    if window[period:] == window[: TIMESTAMP - BSD_OFFSET]:
        return (BSD_OFFSET, 0)
    return (0, BSD_OFFSET)


def _unrotate(tail: bytes, period: int, offset: int) -> bytes:
    """The pattern whose copies fill ``tail`` = data[16:] when pat[0] sits at data[offset].

    data[16] is pat[(16 - offset) mod period]; rotating the first period of
    the tail back by that much gives the pattern as typed.
    """
    shift = (TIMESTAMP - offset) % period
    first = tail[:period]
    return first[period - shift :] + first[: period - shift] if shift else first
