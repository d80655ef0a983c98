"""An append-only text file of records that must survive a crash: the replay
ledger and the wrong-code budget keep their state in one each.

One record per line, written and (at :meth:`Journal.sync`) fsynced before
the caller acts on it. At start the lines are read back; a torn last line
(a crash mid-write, before anything acted on it) is cut off in place. When
the caller's state is much smaller than the file, :meth:`rewrite` replaces
the file atomically. Every operation is relative to a directory descriptor,
so a process that dropped privilege needs no access to the directories above
(the daemon's worker opens its own before dropping root).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO


class Journal:
    """The file behind one kind of durable state."""

    def __init__(self, path: Path, directory: int | None = None) -> None:
        self.path = path
        self.lines = 0  # lines in the file, read or appended: when to rewrite
        self._unsynced = False
        self._sync_failed: str | None = None
        self._own_directory = directory is None
        self._directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY) if directory is None else directory
        self._file: TextIO | None = None
        self._whole: int | None = None  # where a torn last line starts, until open() cuts it

    def read(self, max_size: int | None = None) -> list[str]:
        """Every complete line (none for a missing file); :meth:`open` comes next.

        Raises OSError or UnicodeDecodeError if the file cannot be read, is
        not a regular file, or is larger than ``max_size`` bytes.
        """
        try:
            # O_NONBLOCK: a FIFO planted in the file's place must not hang the start.
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
            descriptor = os.open(self.path.name, flags, dir_fd=self._directory)
            with os.fdopen(descriptor, "r", encoding="ascii", newline="") as handle:
                info = os.fstat(descriptor)
                if not stat.S_ISREG(info.st_mode):
                    raise OSError(f"{self.path} is not a regular file")
                if max_size is not None and info.st_size > max_size:
                    raise OSError(f"{self.path} is larger than {max_size} bytes")
                text = handle.read()
        except FileNotFoundError:
            text = ""
        lines = text.split("\n")
        torn = lines.pop()  # text after the last newline: empty unless a write was torn
        self._whole = len(text) - len(torn) if torn else None
        self.lines = len(lines)
        return lines

    def open(self) -> None:
        """Cut a torn last line off and open for appending. Raises OSError (a
        read-only or full file system): apart from damage, which :meth:`read` tells."""
        if self._whole is not None:
            self._cut(self._whole)  # so later appends start on a clean line
            self._whole = None
        self._file = self._open_append()

    def _open_append(self) -> TextIO:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
        return os.fdopen(os.open(self.path.name, flags, 0o600, dir_fd=self._directory), "a", encoding="ascii")

    def _cut(self, size: int) -> None:
        """Drop a torn tail in place: truncating needs no free space (a rewrite
        would, and a torn tail is most likely where the disk filled up)."""
        descriptor = os.open(self.path.name, os.O_WRONLY | os.O_NOFOLLOW, dir_fd=self._directory)
        try:
            os.ftruncate(descriptor, size)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def append(self, line: str) -> None:
        """Write one record (not yet durable: see :meth:`sync`). Raises OSError."""
        if self._file is None:  # a reopen after a rewrite failed: try again, or fail this record
            self._file = self._open_append()
        self._unsynced = True
        self._file.write(line + "\n")
        self._file.flush()
        self.lines += 1

    def sync(self) -> None:
        """Make every appended record durable; raises OSError if it could not be."""
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

    def rewrite(self, lines: Iterable[str]) -> None:
        """Replace the file by ``lines`` atomically (fsynced whole). Raises OSError."""
        temporary = self.path.name + ".tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        descriptor = os.open(temporary, flags, 0o600, dir_fd=self._directory)
        count = 0
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            for line in lines:
                handle.write(line + "\n")
                count += 1
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path.name, src_dir_fd=self._directory, dst_dir_fd=self._directory)
        os.fsync(self._directory)
        self.lines = count
        self._unsynced = False  # the rewrite was fsynced whole
        # Nothing of the file whose fsync failed is left: the new one holds
        # the caller's whole state, fsynced, so syncing may be trusted again.
        self._sync_failed = None
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
                # whatever they stood for was refused: nothing is lost here.
                pass
        if self._own_directory:
            os.close(self._directory)
