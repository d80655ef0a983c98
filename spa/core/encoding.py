"""Text forms of token bytes that survive the carriers' quirks.

DNS resolvers may randomise the case of a query name (0x20), so DNS labels
use lowercase unpadded base32 (``a-z2-7``) and are lowercased before
decoding. ``ping -p`` takes hex digits, 16 bytes at most.
"""

from __future__ import annotations

import base64
import binascii

MAX_LABEL = 63  # octets in one DNS label (RFC 1035)
MAX_PATTERN = 16  # bytes iputils ping -p accepts


def to_label(data: bytes) -> str:
    """Encode bytes as one lowercase, unpadded base32 DNS label."""
    label = base64.b32encode(data).decode("ascii").rstrip("=").lower()
    if len(label) > MAX_LABEL:
        raise ValueError(f"{len(data)} bytes do not fit one DNS label")
    return label


def from_label(label: str) -> bytes | None:
    """Decode a base32 label in any case; None if it is not base32.

    Rejects labels whose length no byte string encodes to (base32 lengths
    mod 8 are 0, 2, 4, 5 or 7), so every accepted label has one meaning.
    """
    if len(label) % 8 in (1, 3, 6) or len(label) > MAX_LABEL:
        return None
    padded = label.upper() + "=" * (-len(label) % 8)
    try:
        data = base64.b32decode(padded)
    except (binascii.Error, ValueError):
        return None
    # Trailing bits must be zero, otherwise two labels would decode alike.
    if to_label(data) != label.lower():
        return None
    return data


def to_pattern(data: bytes) -> str:
    """Encode bytes as a ``ping -p`` pattern (hex digits)."""
    if len(data) > MAX_PATTERN:
        raise ValueError(f"ping -p carries at most {MAX_PATTERN} bytes, not {len(data)}")
    return data.hex()
