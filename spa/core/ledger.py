"""The replay ledger: every accepted token, remembered until it is stale anyway.

A token is recorded (and, in a :class:`FileLedger`, written and fsynced)
before its grant is applied, so neither a restart nor SIGKILL lets it be
accepted twice. The daemon's worker defers the fsync (``sync_each=False``)
so that the supervisor can check a grant while the disk works, then calls
:meth:`Ledger.sync` and releases the grant only once it returns.

An entry is dropped once its token time is more than ``retention``
seconds old; from then on the *floor* (the newest token time ever dropped)
refuses any token at or below it. Without the floor, a clock stepped back
after pruning would make pruned tokens acceptable again.

Codes that never go stale (emergency codes) are recorded with time
:data:`FOREVER` and are never pruned.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from pathlib import Path

from spa.errors import SpaError

from .events import IPAddress
from .journal import Journal

FOREVER = 2**63 - 1
PRUNE_EVERY = 10.0  # seconds between prunes; pruning is O(entries)


@dataclass(frozen=True)
class Entry:
    """What the ledger remembers of an accepted token."""

    address: IPAddress  # the address its grant opened
    accepted: float  # arrival time of the knock that was accepted
    time: int  # the token's own time (FOREVER: never pruned)


class Ledger:
    """In-memory ledger; the base of :class:`FileLedger` and enough for tests."""

    def __init__(self, retention: int) -> None:
        self.retention = retention
        self.floor = 0
        self._entries: dict[bytes, Entry] = {}
        self._last_prune = 0.0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token_id: bytes) -> Entry | None:
        return self._entries.get(token_id)

    def record(self, token_id: bytes, entry: Entry, now: float) -> None:
        """Remember an accepted token. Raises OSError if it could not be kept."""
        self._entries[token_id] = entry
        if now - self._last_prune >= PRUNE_EVERY:
            self.prune(now)

    def sync(self) -> None:
        """Make every recorded token durable; raises OSError if it could not be.

        A no-op in memory, and in a :class:`FileLedger` that syncs each record.
        """

    def prune(self, now: float) -> None:
        """Forget tokens too old to be accepted, raising the floor past them."""
        self._last_prune = now
        horizon = now - self.retention
        stale = [token for token, entry in self._entries.items() if entry.time < horizon]
        for token in stale:
            self.floor = max(self.floor, self._entries.pop(token).time)


class LedgerCorrupt(SpaError):
    """The state file is damaged in a way that could hide a used token."""


class FileLedger(Ledger):
    """A ledger persisted as an append-only text file in the state directory.

    One line per accepted token (``id address time accepted``) and one per
    floor change (``floor time``); fsync after each, or, with
    ``sync_each=False``, at the caller's :meth:`sync` (which must come
    before any grant the records allow). At start the file is replayed
    (:class:`~spa.core.journal.Journal`: a torn last line is cut off);
    damage anywhere else refuses to start. When the file holds mostly
    dropped entries it is rewritten atomically.
    """

    def __init__(self, path: Path, retention: int, directory: int | None = None, *, sync_each: bool = True) -> None:
        """``directory`` is an open descriptor of ``path``'s directory, if the
        caller has one: every file operation is then relative to it."""
        super().__init__(retention)
        self.path = path
        self._sync_each = sync_each
        self.journal = Journal(path, directory)
        self._load()

    def _load(self) -> None:
        try:
            lines = self.journal.read()
        except (OSError, UnicodeDecodeError) as problem:
            self.journal.close()
            raise LedgerCorrupt(f"{self.path}: cannot read replay state: {problem}") from None
        for number, line in enumerate(lines, start=1):
            try:
                self._apply(line)
            except (ValueError, IndexError):
                self.journal.close()
                raise LedgerCorrupt(
                    f"{self.path}:{number}: damaged replay state; refusing to start rather than "
                    "risk accepting a used token (move the file away to start afresh)"
                ) from None
        try:
            self.journal.open()
        except OSError:
            self.journal.close()
            raise

    def _apply(self, line: str) -> None:
        parts = line.split(" ")
        if parts[0] == "floor" and len(parts) == 2:
            self.floor = max(self.floor, int(parts[1]))
            return
        if len(parts) != 4:
            raise ValueError(line)
        token, address, time, accepted = parts
        when = float(accepted)
        if not math.isfinite(when):
            raise ValueError(line)
        self._entries[bytes.fromhex(token)] = Entry(ipaddress.ip_address(address), when, int(time))

    def _append(self, line: str) -> None:
        self.journal.append(line)
        if self._sync_each:
            self.journal.sync()

    def sync(self) -> None:
        self.journal.sync()

    def record(self, token_id: bytes, entry: Entry, now: float) -> None:
        self._entries[token_id] = entry  # refuse it again even if the write fails
        self._append(_line(token_id, entry))
        if now - self._last_prune >= PRUNE_EVERY:
            self.prune(now)

    def prune(self, now: float) -> None:
        before = self.floor
        super().prune(now)
        if self.floor != before:
            self._append(f"floor {self.floor}")
        if self.journal.lines > 1000 and self.journal.lines > 4 * (len(self._entries) + 1):
            self.journal.rewrite([f"floor {self.floor}", *(_line(t, e) for t, e in self._entries.items())])

    def close(self) -> None:
        self.journal.close()


def _line(token_id: bytes, entry: Entry) -> str:
    return f"{token_id.hex()} {entry.address} {entry.time} {entry.accepted:.3f}"
