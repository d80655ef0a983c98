"""Sub-keys from one secret, so a person's key file holds a single secret.

Each use gets its own key, ``HMAC-SHA256(secret, purpose)``, so a weakness
in how one format uses its key cannot leak into another.
"""

from __future__ import annotations

import hashlib
import hmac

TOKEN_MAC = b"spa1 token mac"
DATAGRAM_AEAD = b"spa1 datagram aead"
SEQUENCE = b"spa1 sequence"
WIRE = b"spa1 datagram wire"  # from the server's obfuscation key: Ed25519 datagrams
SERVER_ID = b"spa1 server id"  # from the server's obfuscation key: what signed datagrams are bound to


def derive(secret: bytes, purpose: bytes) -> bytes:
    """Return the 32-byte sub-key of ``secret`` for ``purpose``."""
    return hmac.digest(secret, purpose, hashlib.sha256)
