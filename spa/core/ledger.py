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

import errno
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from spa.errors import SpaError

from .events import IPAddress

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
    before any grant the records allow). At start the file is
    replayed; a torn last line (a crash mid-write, before any grant) is
    ignored, damage anywhere else refuses to start. When the file holds
    mostly dropped entries it is rewritten atomically.
    """

    def __init__(self, path: Path, retention: int, directory: int | None = None, *, sync_each: bool = True) -> None:
        """``directory`` is an open descriptor of ``path``'s directory, if the
        caller has one: every file operation is then relative to it, so a
        process that dropped privilege needs no access to the directories
        above (the daemon's worker opens it before dropping root)."""
        super().__init__(retention)
        self.path = path
        self._lines = 0
        self._sync_each = sync_each
        self._unsynced = False
        self._sync_failed: str | None = None
        self._own_directory = directory is None
        self._directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY) if directory is None else directory
        self._file: TextIO | None = None
        self._load()
        self._file = self._open_append()

    def _open_append(self) -> TextIO:
        descriptor = os.open(self.path.name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600, dir_fd=self._directory)
        return os.fdopen(descriptor, "a", encoding="ascii")

    def _load(self) -> None:
        try:
            descriptor = os.open(self.path.name, os.O_RDONLY, dir_fd=self._directory)
            with os.fdopen(descriptor, "r", encoding="ascii", newline="") as handle:
                text = handle.read()
        except FileNotFoundError:
            return
        except (OSError, UnicodeDecodeError) as problem:
            raise LedgerCorrupt(f"{self.path}: cannot read replay state: {problem}") from None
        lines = text.split("\n")
        torn = lines.pop()  # text after the last newline: empty unless a write was torn
        for number, line in enumerate(lines, start=1):
            try:
                self._apply(line)
            except (ValueError, IndexError):
                raise LedgerCorrupt(
                    f"{self.path}:{number}: damaged replay state; refusing to start rather than "
                    "risk accepting a used token (move the file away to start afresh)"
                ) from None
        self._lines = len(lines)
        if torn:
            self._cut(len(text) - len(torn))  # so later appends start on a clean line

    def _cut(self, size: int) -> None:
        """Drop a torn tail in place: truncating needs no free space (a rewrite
        would, and a torn tail is most likely where the disk filled up)."""
        descriptor = os.open(self.path.name, os.O_WRONLY, dir_fd=self._directory)
        try:
            os.ftruncate(descriptor, size)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def _apply(self, line: str) -> None:
        parts = line.split(" ")
        if parts[0] == "floor" and len(parts) == 2:
            self.floor = max(self.floor, int(parts[1]))
            return
        if len(parts) != 4:
            raise ValueError(line)
        token, address, time, accepted = parts
        self._entries[bytes.fromhex(token)] = Entry(ipaddress.ip_address(address), float(accepted), int(time))

    def _append(self, line: str) -> None:
        if self._file is None:  # a reopen after a rewrite failed: try again, or fail this record
            self._file = self._open_append()
        self._unsynced = True
        self._file.write(line + "\n")
        self._file.flush()
        self._lines += 1
        if self._sync_each:
            self.sync()

    def sync(self) -> None:
        # After a failed fsync the kernel may have dropped the dirty pages and
        # a later fsync can succeed without them (PostgreSQL's "fsyncgate"):
        # nothing written since the last good sync can be trusted, so every
        # later sync fails too, until spa is restarted and reads the file back.
        if self._sync_failed is not None:
            raise OSError(errno.EIO, f"an earlier fsync of {self.path} failed ({self._sync_failed}); restart spa")
        if self._unsynced and self._file is not None:
            try:
                os.fsync(self._file.fileno())
            except OSError as problem:
                self._sync_failed = problem.strerror or str(problem)
                raise
            self._unsynced = False

    def record(self, token_id: bytes, entry: Entry, now: float) -> None:
        self._entries[token_id] = entry  # refuse it again even if the write fails
        self._append(f"{token_id.hex()} {entry.address} {entry.time} {entry.accepted:.3f}")
        if now - self._last_prune >= PRUNE_EVERY:
            self.prune(now)

    def prune(self, now: float) -> None:
        before = self.floor
        super().prune(now)
        if self.floor != before:
            self._append(f"floor {self.floor}")
        if self._lines > 1000 and self._lines > 4 * (len(self._entries) + 1):
            self._rewrite()

    def _rewrite(self) -> None:
        temporary = self.path.name + ".tmp"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600, dir_fd=self._directory)
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            handle.write(f"floor {self.floor}\n")
            for token, entry in self._entries.items():
                handle.write(f"{token.hex()} {entry.address} {entry.time} {entry.accepted:.3f}\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path.name, src_dir_fd=self._directory, dst_dir_fd=self._directory)
        os.fsync(self._directory)
        self._lines = len(self._entries) + 1
        self._unsynced = False  # the rewrite was fsynced whole
        if self._file is not None:
            file, self._file = self._file, None  # never left holding a closed file
            file.close()
            self._file = self._open_append()

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()
            except OSError:
                # Unflushed lines are records whose write already failed, so
                # their knocks were refused: nothing granted is lost here.
                pass
        if self._own_directory:
            os.close(self._directory)
