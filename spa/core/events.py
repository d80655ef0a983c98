"""The small immutable values that flow through spa.

A carrier decoder turns bytes from the wire into a :class:`Knock`; the gate
turns a Knock into exactly one :class:`Decision` (:class:`Accepted` with its
grants, :class:`Duplicate` or :class:`Rejection`); a firewall backend applies
each :class:`Grant`. None of these types does I/O, so every stage can be tested alone.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

PROTOCOLS = {"tcp": 6, "udp": 17}
PROTOCOL_NAMES = {number: name for name, number in PROTOCOLS.items()}


@dataclass(frozen=True, order=True)
class Request:
    """One protocol/port a knock asks to open, written ``tcp/22``."""

    proto: str
    port: int

    def __post_init__(self) -> None:
        if self.proto not in PROTOCOLS:
            raise ValueError(f"protocol must be tcp or udp, not {self.proto!r}")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be 1-65535, not {self.port}")

    @classmethod
    def parse(cls, text: str) -> Request:
        """Parse ``tcp/22`` (a bare ``22`` means tcp)."""
        proto, sep, port = text.strip().lower().rpartition("/")
        if not sep:
            proto = "tcp"
        if not port.isdigit():
            raise ValueError(f"expected proto/port such as tcp/22, got {text!r}")
        return cls(proto, int(port))

    @property
    def proto_number(self) -> int:
        return PROTOCOLS[self.proto]

    def __str__(self) -> str:
        return f"{self.proto}/{self.port}"


class Carrier(enum.Enum):
    """How a knock reached us. Policy can allow or refuse each per key."""

    ICMP = "icmp"
    DNS = "dns"
    UDP = "udp"
    SEQUENCE = "sequence"


class Form(enum.Enum):
    """Which token format a knock carries (see docs/protocol.md)."""

    COMPACT = "compact"  # 16 bytes: ping -p, or a DNS label queried directly
    EXTENDED = "extended"  # compact + explicit address: DNS through resolvers, NAT
    DATAGRAM = "datagram"  # SPA datagram over UDP (AEAD or Ed25519-signed)
    OTP = "otp"  # TOTP or emergency HOTP code typed by hand
    SEQUENCE = "sequence"  # a completed OTP-derived port sequence
    STATIC = "static"  # a completed knockd-style fixed port sequence (no secret but the ports)


@dataclass(frozen=True)
class OtpCode:
    """A hand-typed one-time code as a decoder found it (not yet checked).

    ``who`` is a key name (DNS labels) or a numeric key id (ping patterns);
    ``address`` is an address written into the label, or None for "the source".
    """

    who: str | int
    digits: str
    address: IPAddress | None = None


@dataclass(frozen=True)
class SequenceHit:
    """A port sequence the sequence carrier saw completed in full."""

    key_id: int
    step: int
    request_index: int


@dataclass(frozen=True)
class StaticHit:
    """A fixed (knockd-style) port sequence, named as in ``[sequences.NAME]``, seen in full."""

    name: str


Payload = Union[bytes, OtpCode, SequenceHit, StaticHit]


@dataclass(frozen=True)
class Knock:
    """One knock as heard on the wire, before anything is verified.

    ``received`` is the arrival time in Unix seconds; the gate judges token
    times against it, so decisions are reproducible in tests.
    """

    carrier: Carrier
    form: Form
    payload: Payload
    source: IPAddress
    received: float


@dataclass(frozen=True)
class Grant:
    """Open ``request`` for ``address`` for ``seconds``: the firewall's input.

    ``key`` says who knocked and ``carrier`` how; ``single_use`` asks the
    backend to let exactly one new connection through.
    """

    address: IPAddress
    request: Request
    seconds: int
    key: str
    carrier: Carrier
    single_use: bool = False


@dataclass(frozen=True)
class Accepted:
    """A verified knock and the grants it earned (one per requested port)."""

    grants: tuple[Grant, ...]
    key: str
    carrier: Carrier
    source: IPAddress


class Reason(enum.Enum):
    """Why a knock was refused. The value is what the log line says."""

    MALFORMED = "malformed"  # wrong length, encoding or version
    STALE = "outside time window"  # clock skew or an old capture
    UNKNOWN_KEY = "unknown key"
    BAD_MAC = "bad authenticator"
    BAD_CODE = "wrong one-time code"
    REPLAY = "replayed token"
    LOCKED_OUT = "locked out after repeated failures"
    RATE_LIMITED = "rate limited"
    POLICY = "refused by policy"
    STATE_UNWRITABLE = "replay state not writable"


@dataclass(frozen=True)
class Rejection:
    """A knock that opens nothing, and why (for the log, never the sender)."""

    reason: Reason
    source: IPAddress
    carrier: Carrier
    detail: str = ""
    key: str | None = None
    alarm: bool = False  # worth a warning, not an info line: a sign of guessing or of a stolen code


@dataclass(frozen=True)
class Duplicate:
    """A repeat of a knock already granted (ping repeats, resolver retries).

    Not an attack and not a new grant: the original grant stands.
    """

    source: IPAddress
    carrier: Carrier
    key: str


Decision = Union[Accepted, Duplicate, Rejection]
