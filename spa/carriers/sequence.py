"""Port sequences (the stock ``knock`` client) to knocks: per-source progress.

The intake hands :meth:`Tracker.hit` every TCP SYN (without ACK) and every
UDP datagram sent to a knock port (:func:`spa.core.sequence.knock_ports`); the tracker says
when a source's recent hits complete a sequence:

- a fixed, knockd-style sequence (:class:`StaticSequence`): the source's
  last ``len(steps)`` hits equal ``steps`` (protocol and port), the first
  within ``timeout`` seconds of the last -> ``Form.STATIC`` knock;
- a one-time sequence (a key of the table from ``Gate.sequences(now)``): the
  ports of the source's last hits, any protocol (``knock`` sends SYNs by
  default, datagrams with ``-u``), within ``otp_timeout`` -> ``Form.SEQUENCE``.

Matching on the tail of the recent hits means a wrong port needs no reset
rule: it just fails every tail it is part of, and a fresh attempt can start
with the next packet. A repeat of the source's previous hit is a
retransmission and never breaks a sequence. State is per source address, so
two people behind one NAT can break each other's sequences; payload tokens
(ping, DNS, UDP) do not have that problem. docs/carriers.md has the details.

Every hit is a guess at a sequence (its tail is looked up), so hits are
budgeted per source: at most ``hit_rate`` a second (burst ``hit_burst``)
count, for an IPv4 address or an IPv6 /64 (one subscriber's prefix: a
guesser owns all of it, and a grant opens the guessing address itself).
Without it one source at packet rate would get ~10^11 guesses a month.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import NamedTuple

from spa.core.events import Carrier, Form, IPAddress, Knock, Request, SequenceHit, StaticHit
from spa.core.limits import Buckets
from spa.core.sequence import StaticSequence


class Hit(NamedTuple):
    """One packet to a watched port, as remembered for its source."""

    proto: int  # index in PROTOS
    port: int
    time: float


PROTOS = ("tcp", "udp")
_PACKED = struct.Struct("<BHd")  # a Hit in 11 bytes


class Tracker:
    """Per-source progress through port sequences; bounded memory (LRU of sources).

    Not thread-safe: one intake loop owns it. Each source keeps at most as
    many hits as the longest sequence has ports, packed into one small
    ``bytes`` (11 bytes a hit) under the address's packed bytes, in a plain
    dict whose order is its LRU: ~180 bytes a source, 12 MB for 65,536,
    where lists of tuples keyed by ``ipaddress`` objects took ~600 (the
    memory bench, docs/benchmarks.md, showed the difference). At most
    ``max_sources`` sources are kept, the least recently active dropped
    first: someone spraying spoofed sources can push a person's half-done
    sequence out, as they could by sending one stray port from that
    person's address.
    """

    def __init__(
        self, statics: tuple[StaticSequence, ...] = (), otp_timeout: float = 10.0, max_sources: int = 65536,
        hit_rate: float | None = None, hit_burst: int = 20,
    ) -> None:
        """``hit_rate`` None counts every hit (the forgery bench measures the matcher alone)."""
        if max_sources < 1:
            raise ValueError("max_sources must be at least 1")
        self.otp_timeout = otp_timeout
        self.max_sources = max_sources
        self._budget = Buckets(hit_rate, hit_burst, max_sources) if hit_rate is not None else None
        self.over_budget = 0  # hits not counted: their source sent more than hit_rate
        # packed address -> packed hits; insertion order is recency (pop and re-insert).
        self._sources: dict[bytes, bytes] = {}
        self._otp: Mapping[tuple[int, ...], SequenceHit] = {}
        self._otp_lengths: tuple[int, ...] = ()
        self._by_last: dict[tuple[int, int], tuple[tuple[StaticSequence, tuple[tuple[int, int], ...]], ...]] = {}
        self._static_depth = 0
        self._depth = 1
        self._index_statics(statics)

    def buckets(self) -> dict[str, Buckets]:
        """The hit budget, for spa.core.rates to save and restore (none when unlimited)."""
        return {"hits": self._budget} if self._budget is not None else {}

    def _index_statics(self, statics: tuple[StaticSequence, ...]) -> None:
        """Index the fixed sequences by their last step (a reload makes a new worker, so once)."""
        by_last: dict[tuple[int, int], list[tuple[StaticSequence, tuple[tuple[int, int], ...]]]] = {}
        for static in statics:
            steps = tuple((PROTOS.index(step.proto), step.port) for step in static.steps)
            # Indexed by the final step: only a hit on that step can complete it.
            by_last.setdefault(steps[-1], []).append((static, steps))
        self._by_last = {last: tuple(group) for last, group in by_last.items()}
        self._static_depth = max((len(static.steps) for static in statics), default=0)
        self._resize()

    def set_otp(self, table: Mapping[tuple[int, ...], SequenceHit]) -> None:
        """Replace the one-time sequences acceptable now (from ``Gate.sequences(now)``).

        The daemon refreshes it at least once per sequence step; the table is
        used as given, not copied.
        """
        self._otp = table
        self._otp_lengths = tuple(sorted({len(ports) for ports in table}, reverse=True))
        self._resize()

    def _resize(self) -> None:
        # Sources' lists are trimmed lazily, on their next hit.
        self._depth = max(self._static_depth, self._otp_lengths[0] if self._otp_lengths else 0, 1)

    def __len__(self) -> int:
        return len(self._sources)

    def hit(self, source: IPAddress, request: Request, received: float) -> list[Knock]:
        """Record one packet to a watched port; the knocks it completes (usually none)."""
        proto, port = (0 if request.proto == PROTOS[0] else 1), request.port
        key = source.packed
        if self._budget is not None and not self._budget.take(key[:8], received):
            self.over_budget += 1
            return []
        packed = self._sources.pop(key, None)
        if packed is None:
            if len(self._sources) >= self.max_sources:
                del self._sources[next(iter(self._sources))]
            packed = b""
        new = _PACKED.pack(proto, port, received)
        if packed and packed[-_PACKED.size:-8] == new[:3]:
            # A retransmitted SYN (or `knock` re-run with the first port after
            # a lost attempt): refresh its time rather than count it twice.
            self._sources[key] = packed[:-_PACKED.size] + new
            return []
        packed = (packed + new)[-self._depth * _PACKED.size:]
        # Plain (proto, port, time) tuples: this runs for every SYN of a flood.
        hits = list(_PACKED.iter_unpack(packed))
        found = self._statics_completed(hits, source, received) + self._otp_completed(hits, source, received)
        # A completed sequence is not the start of the next.
        self._sources[key] = b"" if found else packed
        return found

    def hits(self, source: IPAddress) -> list[Hit]:
        """What is remembered for ``source`` (for tests and diagnostics)."""
        return [Hit._make(fields) for fields in _PACKED.iter_unpack(self._sources.get(source.packed, b""))]

    def _statics_completed(self, hits: list[tuple[int, int, float]], source: IPAddress, received: float) -> list[Knock]:
        found: list[Knock] = []
        proto, port, _ = hits[-1]
        for static, steps in self._by_last.get((proto, port), ()):
            size = len(steps)
            if len(hits) < size or received - hits[-size][2] > static.timeout:
                continue
            if all(hit[:2] == step for hit, step in zip(hits[-size:], steps, strict=False)):
                found.append(Knock(Carrier.SEQUENCE, Form.STATIC, StaticHit(static.name), source, received))
        return found

    def _otp_completed(self, hits: list[tuple[int, int, float]], source: IPAddress, received: float) -> list[Knock]:
        for size in self._otp_lengths:  # longest first: the most specific match
            if len(hits) < size or received - hits[-size][2] > self.otp_timeout:
                continue
            found = self._otp.get(tuple(hit[1] for hit in hits[-size:]))
            if found is not None:
                return [Knock(Carrier.SEQUENCE, Form.SEQUENCE, found, source, received)]
        return []
