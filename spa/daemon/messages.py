"""What the worker tells the supervisor over their pipe: one JSON object per line.

Pure code. The supervisor treats every line as untrusted (the worker parses
packets from the internet, so it is the side an attacker would subvert):
each grant is re-validated field by field, and a malformed line is dropped.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

from spa.core.events import Carrier, Grant, Request

MAX_LINE = 4096  # a grant or a stats summary is far smaller; longer lines are dropped


@dataclass(frozen=True)
class Stats:
    """Counters the worker reports every few seconds and on SIGUSR1."""

    counts: dict[str, int]


Message = Grant | Stats


def encode(message: Message) -> bytes:
    if isinstance(message, Grant):
        body: dict[str, Any] = {
            "grant": {
                "address": str(message.address),
                "request": str(message.request),
                "seconds": message.seconds,
                "key": message.key,
                "carrier": message.carrier.value,
                "single_use": message.single_use,
            }
        }
    else:
        body = {"stats": dict(message.counts)}
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> Message | None:
    """The message on ``line``, or None if it is not a well-formed one."""
    if len(line) > MAX_LINE:
        return None
    try:
        body = json.loads(line)
        if not isinstance(body, dict) or len(body) != 1:
            return None
        if "stats" in body:
            counts = body["stats"]
            if not isinstance(counts, dict):
                return None
            return Stats({str(k): int(v) for k, v in counts.items() if isinstance(v, int)})
        fields = body["grant"]
        seconds = fields["seconds"]
        key = fields["key"]
        single_use = fields["single_use"]
        if not isinstance(seconds, int) or isinstance(seconds, bool) or not 1 <= seconds <= 86400:
            return None
        if not isinstance(key, str) or not isinstance(single_use, bool):
            return None
        if not isinstance(fields["address"], str) or not isinstance(fields["request"], str):
            return None  # Request.parse(None) would raise AttributeError
        address = ipaddress.ip_address(fields["address"])
        if getattr(address, "scope_id", None) is not None:
            # "fe80::1%eth0": the scope is free text the firewall command would
            # carry verbatim; no knock ever yields one.
            return None
        return Grant(
            address=address,
            request=Request.parse(fields["request"]),
            seconds=seconds,
            key=key,
            carrier=Carrier(fields["carrier"]),
            single_use=single_use,
        )
    except (ValueError, KeyError, TypeError, RecursionError):
        # RecursionError: json nests arrays as deep as the line allows ("[[[[...").
        return None


class LineReader:
    """Splits a byte stream into lines, bounding the partial line it keeps."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        *lines, rest = self._buffer.split(b"\n")
        self._buffer = bytearray(rest[:MAX_LINE + 1])
        return [bytes(line) for line in lines]
