"""The rate limits' state, kept across a worker restart, a reload and a restart of spa.

The wrong-code budget and the replay ledger are written as they change
(spa.core.guesses, spa.core.ledger): each matters for one event. Rate
buckets change with every verification, so they are saved whole instead:
every few seconds while the worker runs, and when it stops (a reload or a
restart of spa stops it first). A worker that crashes loses the last few
seconds of them, which the buckets refill in anyway; nothing a packet sends
can crash it. Without this each restart handed every source and key a full
burst again.

One line per bucket entry that is not full: ``NAME KEY FULL_AT``, KEY being
``b<hex>`` (a packed address), ``i<number>`` (a key id) or ``s<hex>`` (a name).
Entries whose bucket is full again are left out, so the file holds at most
what the limits track.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from .journal import Journal
from .limits import Buckets

SAVE_EVERY = 5.0  # seconds between saves while running
MAX_SIZE = 16 << 20  # bytes: larger is no file this process wrote (65,536 entries a table take ~4 MB)


class RateFile:
    """Where the rate buckets of one worker are saved and read back."""

    def __init__(self, path: Path, directory: int | None = None) -> None:
        self.path = path
        self._directory = directory
        self._written: list[str] | None = None  # what the file holds, when this process wrote it

    def load(self, buckets: Mapping[str, Buckets], now: float) -> int:
        """Restore what the file holds into ``buckets`` (by name); how many entries.

        A damaged or missing file restores nothing: unlike the ledger, the
        worst a lost file does is refill buckets that refill within seconds.
        """
        journal = Journal(self.path, self._directory)
        restored = 0
        try:
            lines = journal.read(MAX_SIZE)
        except (OSError, UnicodeDecodeError):
            return 0
        finally:
            journal.close()
        for line in lines:
            name, _, rest = line.partition(" ")
            key_text, _, full_at_text = rest.partition(" ")
            target = buckets.get(name)
            try:
                key, full_at = _decode(key_text), float(full_at_text)
            except ValueError:
                continue
            if target is not None and math.isfinite(full_at) and full_at > now:
                # Never later than an empty bucket would be full again: a file from
                # a clock that ran ahead, or one a subverted worker wrote, cannot
                # lock anyone out for longer than the limit itself would.
                target.restore(key, min(full_at, now + target.burst / target.rate))
                restored += 1
        return restored

    def save(self, buckets: Mapping[str, Buckets], now: float) -> None:
        """Write every bucket entry that is not full at ``now``, atomically, unless that is
        what this process last wrote. Raises OSError."""
        lines = [f"{name} {_encode(key)} {full_at:.3f}"
                 for name, bucket in buckets.items() for key, full_at in bucket.pending(now)]
        if lines == self._written:
            return  # an idle server writes (and fsyncs) nothing every few seconds
        journal = Journal(self.path, self._directory)
        try:
            journal.rewrite(lines)
        finally:
            journal.close()
        self._written = lines


def _encode(key: object) -> str:
    if isinstance(key, bytes):
        return "b" + key.hex()
    if isinstance(key, int) and not isinstance(key, bool):
        return f"i{key}"
    if isinstance(key, str):
        return "s" + key.encode().hex()
    raise ValueError(f"no file form for a bucket key of type {type(key).__name__}")


def _decode(text: str) -> bytes | int | str:
    kind, body = text[:1], text[1:]
    if kind == "b":
        return bytes.fromhex(body)
    if kind == "i":
        return int(body)
    if kind == "s":
        return bytes.fromhex(body).decode()
    raise ValueError(text)

