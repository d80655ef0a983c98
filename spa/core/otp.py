"""One-time codes a person types by hand: TOTP and emergency HOTP codes.

A code travels as a DNS label ``<name>-<digits>[-<address>]`` (for example
``alice-492039`` or ``alice-492039-198-51-100-7``) or as a ``ping -p``
pattern of hex digits, ``<key id as 4 hex digits><digits>`` (for example
``0007492039``). TOTP codes have 6 or 8 digits (what authenticator apps
show); emergency codes have 10, so the two never collide.

A code is not a MAC over an address: an address written into the label is
a claim that anyone on the path can rewrite, and the packet's source is no
better. So a code knock binds no address, and a key takes codes only when
its policy says ``allow_codes`` (set by ``spa keygen --totp/--emergency``);
docs/threat-model.md, "Code races", states the race and what limits it.
"""

from __future__ import annotations

import base64
import ipaddress
import re

import pyotp

from . import addresses
from .events import IPAddress, OtpCode

TOTP_DIGITS = (6, 8)
EMERGENCY_DIGITS = 10
MIN_SECRET_BITS = 112  # what the pinned pyotp (2.12) computes codes for
# The longest code label, name-<10 digits>-<IPv6 in RFC 5952 form, 39
# characters>, must fit one DNS label (63 octets): names have 12 at most.
MAX_NAME = 12
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]{0,11}$")
_DIGITS = re.compile(r"^[0-9]+$")


def new_secret() -> str:
    """A fresh 160-bit base32 secret (the RFC 4226 recommended length)."""
    return pyotp.random_base32(32)


def totp(secret: str, digits: int = 6, interval: int = 30) -> pyotp.TOTP:
    return pyotp.TOTP(secret, digits=digits, interval=interval)


def totp_matches(secret: str, digits: str, counter: int) -> bool:
    """Whether ``digits`` is the TOTP code for time step ``counter``."""
    expected = pyotp.HOTP(secret, digits=len(digits)).at(counter)
    return pyotp.utils.strings_equal(expected, digits)


def emergency_codes(secret: str, count: int) -> list[str]:
    """The printed list: HOTP codes for counters 0..count-1, 10 digits each."""
    hotp = pyotp.HOTP(secret, digits=EMERGENCY_DIGITS)
    return [hotp.at(counter) for counter in range(count)]


def otpauth_uri(secret: str, name: str, issuer: str, digits: int = 6) -> str:
    """The ``otpauth://`` URI an authenticator app enrols from."""
    return totp(secret, digits).provisioning_uri(name=name, issuer_name=issuer)


def secret_problem(secret: str) -> str | None:
    """Why ``secret`` cannot be a TOTP or emergency secret, or None if it can.

    The key store loader asks this, so a secret the runtime would choke on is
    refused where it is written (file, line, option): the pinned pyotp (2.12)
    raises ValueError for secrets under 112 bits (NIST SP 800-63B-4) the
    first time it computes a code, which would be at a knock (TOTP) or while
    a reload builds the keyring (emergency codes). Our own reading comes
    first for a message people can act on; then pyotp is asked too, so
    whatever else this pyotp refuses is refused here as well.
    """
    try:
        decoded = base64.b32decode(secret.upper() + "=" * (-len(secret) % 8))
    except ValueError:  # binascii.Error included
        return "expected a base32 secret (letters A-Z and digits 2-7)"
    if len(decoded) * 8 < MIN_SECRET_BITS:
        return f"expected a base32 secret of at least {MIN_SECRET_BITS} bits, not {len(decoded) * 8}"
    try:
        pyotp.HOTP(secret, digits=EMERGENCY_DIGITS).at(0)
        pyotp.TOTP(secret, digits=max(TOTP_DIGITS)).at(0)
    except ValueError as problem:
        return f"pyotp refuses this secret: {problem}"
    return None


def to_label(name: str, digits: str, address: IPAddress | None = None) -> str:
    """The DNS label form: ``alice-492039`` or ``alice-492039-198-51-100-7``."""
    label = f"{name}-{digits}"
    if address is not None:
        label += "-" + _address_to_label(address)
    if len(label) > 63:
        raise ValueError(f"{label!r} is longer than one DNS label (63 characters)")
    return label


def to_pattern(key_id: int, digits: str) -> str:
    """The ``ping -p`` form: key id as 4 hex digits, then the code's digits."""
    return f"{key_id:04x}{digits}"


def _address_to_label(address: IPAddress) -> str:
    """RFC 5952 text (lowercase, shortest, ``::`` for the first longest zero run) with ``-`` for ``:``."""
    if address.version == 4:
        return str(address).replace(".", "-")
    return address.compressed.replace(":", "-")


def _address_from_label(text: str) -> IPAddress | None:
    parts = text.split("-")
    try:
        if len(parts) == 4 and all(_DIGITS.fullmatch(p) for p in parts):
            return ipaddress.IPv4Address(".".join(parts))
        address = ipaddress.IPv6Address(text.replace("-", ":"))
    except ValueError:
        return None
    # A scope ("fe80::1%eth0") names an interface of the sender, not an address
    # to open; an IPv4-mapped address is an IPv4 host in disguise (addresses.py).
    if address.scope_id is not None or addresses.is_mapped(address):
        return None
    return address


def _is_code(digits: str) -> bool:
    return bool(_DIGITS.fullmatch(digits)) and len(digits) in (*TOTP_DIGITS, EMERGENCY_DIGITS)


def parse_label(label: str) -> OtpCode | None:
    """Read an OTP DNS label (any case); None if it is not one."""
    name, sep, rest = label.lower().partition("-")
    if not sep or not NAME_PATTERN.fullmatch(name):
        return None
    digits, sep, address_text = rest.partition("-")
    if not _is_code(digits):
        return None
    address = None
    if sep:
        address = _address_from_label(address_text)
        if address is None:
            return None
    return OtpCode(who=name, digits=digits, address=address)


def parse_pattern(pattern: bytes) -> OtpCode | None:
    """Read an OTP ``ping -p`` pattern (5, 6 or 7 bytes); None if not one."""
    if len(pattern) < 3:
        return None
    key_id = pattern[0] << 8 | pattern[1]
    digits = pattern[2:].hex()
    if key_id == 0 or not _is_code(digits):
        return None
    return OtpCode(who=key_id, digits=digits)
