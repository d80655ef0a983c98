"""The compact token (16 bytes) and the extended token (compact + address).

Byte layout, specified in docs/protocol.md::

    P = version<<4|mode (1) | key id (2) | time (4) | request index (1) | MAC (8)
    MAC = HMAC-SHA256(K_mac, "spa1 compact" | P[0:8] | A)[0:8]
    T = AES-256(O, P)                              compact token, 16 bytes
    X = T | A xor AES-256(O, T)[0:len(A)]          extended token, 20 or 32 bytes

``O`` is the server-wide obfuscation key (every client of the server holds
it); ``K_mac`` is the per-person key. ``A`` is the address to open, packed
(4 or 16 bytes), or empty for an unbound token. One AES block makes the
token look like random bytes on the wire and lets the server reject junk
with one block decryption and a byte compare, before any MAC.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
from typing import NamedTuple

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .events import IPAddress

VERSION = 1
SIZE = 16
MAC_SIZE = 8
MAC_CONTEXT = b"spa1 compact"
MAX_KEY_ID = 0xFFFF
MAX_TIME = 0xFFFFFFFF


class AddressMode(enum.IntEnum):
    """Which address the MAC covers, and so which address the grant opens."""

    SOURCE = 0  # the knock packet's source address (not sent: the server sees it)
    UNBOUND = 1  # no address: opens the source; policy must allow it
    EXPLICIT = 2  # an address carried in the extended token


class Fields(NamedTuple):
    """The plaintext fields of a compact token.

    A NamedTuple rather than a dataclass: one is built for every token that
    passes the version byte, on the hot path of the gate.
    """

    mode: int  # an AddressMode value
    key_id: int
    time: int
    request_index: int


class Obfuscator:
    """One AES-256 block cipher under the server-wide obfuscation key.

    Keeps its ECB contexts: ECB over whole blocks holds no state between
    calls, and building a context costs more than using one.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the obfuscation key must be 32 bytes")
        cipher = Cipher(algorithms.AES(key), modes.ECB())
        self.encrypt_block = cipher.encryptor().update
        self.decrypt_block = cipher.decryptor().update


def _pack_address(address: IPAddress | None) -> bytes:
    return b"" if address is None else address.packed


def compute_mac(mac_key: bytes, head: bytes, address_bytes: bytes) -> bytes:
    """The 8-byte MAC over the first 8 plaintext bytes and the address."""
    return hmac.digest(mac_key, MAC_CONTEXT + head + address_bytes, hashlib.sha256)[:MAC_SIZE]


def _head(mode: AddressMode, key_id: int, time: int, request_index: int) -> bytes:
    if not 1 <= key_id <= MAX_KEY_ID:
        raise ValueError(f"key id must be 1-{MAX_KEY_ID}, not {key_id}")
    if not 0 <= time <= MAX_TIME:
        raise ValueError(f"time must fit 32 bits, not {time}")
    if not 0 <= request_index <= 0xFF:
        raise ValueError(f"request index must be 0-255, not {request_index}")
    return (
        bytes([VERSION << 4 | mode, key_id >> 8, key_id & 0xFF])
        + time.to_bytes(4, "big")
        + bytes([request_index])
    )


def seal_compact(
    obfuscator: Obfuscator,
    mac_key: bytes,
    key_id: int,
    time: int,
    request_index: int,
    address: IPAddress | None,
) -> bytes:
    """Build a compact token bound to ``address`` (None: unbound).

    ``address`` must be the source address the server will see, so a client
    behind NAT passes its public address (or None, if policy allows).
    """
    mode = AddressMode.UNBOUND if address is None else AddressMode.SOURCE
    head = _head(mode, key_id, time, request_index)
    return obfuscator.encrypt_block(head + compute_mac(mac_key, head, _pack_address(address)))


def seal_extended(
    obfuscator: Obfuscator,
    mac_key: bytes,
    key_id: int,
    time: int,
    request_index: int,
    address: IPAddress,
) -> bytes:
    """Build an extended token that opens ``address`` wherever it is sent from."""
    head = _head(AddressMode.EXPLICIT, key_id, time, request_index)
    packed = address.packed
    token = obfuscator.encrypt_block(head + compute_mac(mac_key, head, packed))
    pad = obfuscator.encrypt_block(token)
    return token + bytes(a ^ b for a, b in zip(packed, pad, strict=False))


def open_block(obfuscator: Obfuscator, token: bytes) -> tuple[Fields, bytes] | None:
    """Decrypt a 16-byte token; None unless it has our version and a known mode.

    Returns the fields and the plaintext block (the MAC is checked later,
    once the key is known). Most junk stops here: 3 in 256 random blocks
    pass the version byte.
    """
    if len(token) != SIZE:
        return None
    plain = obfuscator.decrypt_block(token)
    first = plain[0]
    if first >> 4 != VERSION or (first & 0x0F) > AddressMode.EXPLICIT:
        return None
    fields = Fields(first & 0x0F, plain[1] << 8 | plain[2], int.from_bytes(plain[3:7], "big"), plain[7])
    return fields, plain


def unmask_address(obfuscator: Obfuscator, data: bytes) -> IPAddress:
    """The address an extended token names (its length already checked)."""
    key_stream = obfuscator.encrypt_block(data[:SIZE])
    return ipaddress.ip_address(bytes(a ^ b for a, b in zip(data[SIZE:], key_stream, strict=False)))


EXTENDED_SIZES = (SIZE + 4, SIZE + 16)


def mac_matches(mac_key: bytes, plain: bytes, address: IPAddress | None) -> bool:
    """Check a decrypted block's MAC in constant time."""
    expected = compute_mac(mac_key, plain[:8], _pack_address(address))
    return hmac.compare_digest(expected, plain[8:])
