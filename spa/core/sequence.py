"""Port sequences for the stock ``knock`` client: one-time and fixed.

One-time sequences:

The ports for time step ``s`` and request index ``i`` are drawn from
``HMAC-SHA256(K_seq, "spa1 sequence" | s (8) | i (1) | block (1))``, two
bytes at a time, mapped onto the configured port range without modulo bias
and without repeats. They change every step and each works once, so a
sniffed sequence is worthless a step later (and at once, once used).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from .events import Request
from .policy import Policy

CONTEXT = b"spa1 sequence"


@dataclass(frozen=True)
class SequenceRule:
    """How sequences are shaped: length, port range and step length."""

    length: int = 3
    low: int = 20000
    high: int = 59999
    step_seconds: int = 30

    def __post_init__(self) -> None:
        if not 2 <= self.length <= 8:
            raise ValueError("a sequence has 2-8 ports")
        if not 1 <= self.low < self.high <= 65535 or self.high - self.low + 1 < 4 * self.length:
            raise ValueError("the sequence port range is empty or too small")
        if not 5 <= self.step_seconds <= 3600:
            raise ValueError("a sequence step lasts 5-3600 seconds")

    def step_at(self, time: float) -> int:
        return int(time) // self.step_seconds


def ports(sequence_key: bytes, step: int, request_index: int, rule: SequenceRule) -> tuple[int, ...]:
    """The sequence of ports for one key, time step and request index."""
    span = rule.high - rule.low + 1
    limit = 65536 - 65536 % span  # draws at or above this would bias the modulo
    chosen: list[int] = []
    block = 0
    while len(chosen) < rule.length:
        message = CONTEXT + step.to_bytes(8, "big") + bytes([request_index, block])
        digest = hmac.digest(sequence_key, message, hashlib.sha256)
        for offset in range(0, len(digest), 2):
            draw = int.from_bytes(digest[offset : offset + 2], "big")
            port = rule.low + draw % span
            if draw < limit and port not in chosen:
                chosen.append(port)
                if len(chosen) == rule.length:
                    break
        block += 1
    return tuple(chosen)


@dataclass(frozen=True)
class StaticSequence:
    """A knockd-style fixed sequence, one ``[sequences.NAME]`` table.

    Whoever sends ``steps`` in order, each within ``timeout`` seconds of the
    first, is granted ``policy.open`` for their own address. There is no
    secret but the ports, so a sniffed sequence works again: this exists for
    people moving from knockd, and docs/carriers.md says to prefer the
    one-time kind.
    """

    name: str
    steps: tuple[Request, ...]
    policy: Policy
    timeout: float = 5.0

    def __post_init__(self) -> None:
        if not 1 <= len(self.steps) <= 16:
            raise ValueError("a sequence has 1-16 ports")
        if any(a == b for a, b in zip(self.steps, self.steps[1:], strict=False)):
            # Duplicate SYNs are ignored, so a port twice in a row could never match.
            raise ValueError("a port may not follow itself in a sequence")
        if not 0.1 <= self.timeout <= 3600:
            raise ValueError("timeout must be 0.1-3600 seconds")


def knock_ports(
    statics: tuple[StaticSequence, ...], rule: SequenceRule, otp: bool
) -> tuple[tuple[str, int, int], ...]:
    """Port ranges the intake must capture and the guard must keep dropped.

    The one place that says which ports are sequence knock ports: the config
    turns them into ``FirewallSettings.quiet``, the daemon into its filter.

    Each fixed sequence's steps, plus the whole one-time range for tcp and
    udp when one-time sequences are on, as (proto, low, high) with
    overlapping and adjacent ranges merged, sorted by proto then port.
    """
    ranges: dict[str, list[tuple[int, int]]] = {"tcp": [], "udp": []}
    for static in statics:
        for step in static.steps:
            ranges[step.proto].append((step.port, step.port))
    if otp:
        for proto in ("tcp", "udp"):
            ranges[proto].append((rule.low, rule.high))
    merged: list[tuple[str, int, int]] = []
    for proto in sorted(ranges):
        current: tuple[int, int] | None = None
        for low, high in sorted(ranges[proto]):
            if current is not None and low <= current[1] + 1:
                current = (current[0], max(current[1], high))
                continue
            if current is not None:
                merged.append((proto, *current))
            current = (low, high)
        if current is not None:
            merged.append((proto, *current))
    return tuple(merged)
