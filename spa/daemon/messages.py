"""What the worker tells the supervisor over their pipe: one JSON object per line.

Pure code. The supervisor treats every line as untrusted (the worker parses
packets from the internet, so it is the side an attacker would subvert):
each grant is re-validated field by field, and a malformed line is dropped.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from spa.core.events import Carrier, Grant, Request

MAX_LINE = 4096  # a grant or a stats summary is far smaller; longer lines are dropped
# Counter names as the worker makes them ("gate.accepted", "packets.icmp"):
# they end up as keys in status.json and on the terminal of whoever runs
# `spa status`, so nothing else (no escape sequence, no newline) gets that far.
COUNTER_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}(\.[a-z][a-z0-9_]{0,31}){0,3}")
MAX_COUNTERS = 100  # the worker keeps about 25
MAX_COUNT = 2**63 - 1


@dataclass(frozen=True)
class Stats:
    """Counters the worker reports every few seconds and on SIGUSR1."""

    counts: dict[str, int]


@dataclass(frozen=True)
class Synced:
    """The ledger records behind every grant sent so far are on disk: apply them.

    Grants travel ahead of the ledger's fsync so that the supervisor checks
    them while the disk works; it holds them until this arrives.
    """


@dataclass(frozen=True)
class Discard:
    """The ledger could not be synced: drop every grant held, apply none."""


@dataclass(frozen=True)
class Timed:
    """A grant and the arrival time of the knock that earned it.

    The grant ends at ``at + grant.seconds`` however late the supervisor
    applies it (stopped, busy, or waiting for Synced): a knock accepted
    while the supervisor was stopped cannot open a port minutes later for
    the full length. A lying worker can only shorten grants (the supervisor
    never counts ``at`` later than its own clock).
    """

    grant: Grant
    at: float


Message = Timed | Stats | Synced | Discard


def encode(message: Message) -> bytes:
    if isinstance(message, Timed):
        grant = message.grant
        body: dict[str, Any] = {
            "grant": {
                "address": str(grant.address),
                "request": str(grant.request),
                "seconds": grant.seconds,
                "key": grant.key,
                "carrier": grant.carrier.value,
                "single_use": grant.single_use,
                "at": message.at,
            }
        }
    elif isinstance(message, Stats):
        body = {"stats": dict(message.counts)}
    elif isinstance(message, Synced):
        body = {"synced": True}
    else:
        body = {"discard": True}
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> Message | None:
    """The message on ``line``, or None if it is not a well-formed one."""
    if len(line) > MAX_LINE:
        return None
    try:
        body = json.loads(line)
        if not isinstance(body, dict) or len(body) != 1:
            return None
        if body == {"synced": True}:
            return Synced()
        if body == {"discard": True}:
            return Discard()
        if "stats" in body:
            counts = body["stats"]
            return Stats(counts) if valid_counts(counts) else None
        fields = body["grant"]
        seconds = fields["seconds"]
        key = fields["key"]
        single_use = fields["single_use"]
        if not isinstance(seconds, int) or isinstance(seconds, bool) or not 1 <= seconds <= 86400:
            return None
        if not isinstance(key, str) or not isinstance(single_use, bool):
            return None
        at = fields["at"]
        if not isinstance(at, (int, float)) or isinstance(at, bool) or not math.isfinite(at):
            return None
        if not isinstance(fields["address"], str) or not isinstance(fields["request"], str):
            return None  # Request.parse(None) would raise AttributeError
        address = ipaddress.ip_address(fields["address"])
        if getattr(address, "scope_id", None) is not None:
            # "fe80::1%eth0": the scope is free text the firewall command would
            # carry verbatim; no knock ever yields one.
            return None
        grant = Grant(
            address=address,
            request=Request.parse(fields["request"]),
            seconds=seconds,
            key=key,
            carrier=Carrier(fields["carrier"]),
            single_use=single_use,
        )
        return Timed(grant, float(at))
    except (ValueError, KeyError, TypeError, RecursionError):
        # RecursionError: json nests arrays as deep as the line allows ("[[[[...").
        return None


def valid_counts(counts: object) -> bool:
    """Counters as spa makes them: a bounded dict of known-shape names to whole numbers."""
    return (isinstance(counts, dict) and len(counts) <= MAX_COUNTERS
            and all(valid_counter(name, value) for name, value in counts.items()))


def valid_counter(name: object, value: object) -> bool:
    return (isinstance(name, str) and COUNTER_NAME.fullmatch(name) is not None
            and isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT)


class LineReader:
    """Splits a byte stream into lines, bounding the partial line it keeps."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        *lines, rest = self._buffer.split(b"\n")
        self._buffer = bytearray(rest[:MAX_LINE + 1])
        return [bytes(line) for line in lines]
