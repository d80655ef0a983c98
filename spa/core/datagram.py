"""The SPA datagram: one UDP packet with room for several ports and a timeout.

Byte layout, specified in docs/protocol.md::

    h = version<<4|kind (1) | key id (2) | time (4) | random (9)
    H = AES-256(O, h)                                    16-byte header
    body = mode (1) | [address 4|16] | seconds (2) | n (1) | n x (proto (1) | port (2))
           | [Ed25519 signature (64), kind 1 only, over "spa1 datagram sig" | I | h | body | A]
    datagram = H | ChaCha20-Poly1305(K, nonce=H[0:12], aad="spa1 datagram" | H | A).seal(body)

Kind 0 uses the person's key, ``K = derive(secret, "spa1 datagram aead")``.
Kind 1 is signed with the person's Ed25519 key and sealed under the
server-wide ``K = derive(O, "spa1 datagram wire")``: the server keeps only
public keys, so a stolen server config lets nobody forge a knock. Its
signature covers ``I = derive(O, "spa1 server id")``: one Ed25519 key
registered on two servers cannot have its datagram for one re-wrapped for
the other by someone who holds both servers' ``O`` (kind 0 is bound to
``O`` already, through ``H`` in the AAD).

``A`` is the packet's source address when the mode is SOURCE, else empty: it
binds the knock to where it came from without sending the address. The
header's 9 random bytes make every datagram unique; ``H`` is its replay id.
The header is checked (version, key id, time) before any AEAD work.
"""

from __future__ import annotations

import enum
import ipaddress
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .compact import MAX_KEY_ID, MAX_TIME, Obfuscator
from .events import PROTOCOL_NAMES, IPAddress, Reason, Request

VERSION = 2
HEADER = 16
TAG = 16
SIGNATURE = 64
SERVER_ID = 32
MAX_REQUESTS = 16
AAD_CONTEXT = b"spa1 datagram"
SIGN_CONTEXT = b"spa1 datagram sig"
MAX_SIZE = HEADER + 1 + 16 + 2 + 1 + 3 * MAX_REQUESTS + SIGNATURE + TAG


class Kind(enum.IntEnum):
    AEAD = 0  # sealed with the person's own key
    SIGNED = 1  # Ed25519-signed, sealed with the server-wide wire key


class Mode(enum.IntEnum):
    """Which address to open (and what the AEAD binds)."""

    SOURCE = 0
    UNBOUND = 1
    IPV4 = 4
    IPV6 = 6


@dataclass(frozen=True)
class Header:
    """The decrypted header: enough to pick a key and judge the time."""

    kind: Kind
    key_id: int
    time: int
    sealed: bytes  # H as sent: the nonce source and the replay id
    plain: bytes  # h


@dataclass(frozen=True)
class Body:
    """What the datagram asks for."""

    mode: Mode
    requests: tuple[Request, ...]
    seconds: int = 0  # 0: the policy's default
    address: IPAddress | None = None  # only with mode IPV4/IPV6


def encode_body(body: Body) -> bytes:
    if not 1 <= len(body.requests) <= MAX_REQUESTS:
        raise ValueError(f"a datagram asks for 1-{MAX_REQUESTS} ports")
    if len(set(body.requests)) != len(body.requests):
        raise ValueError("a datagram asks for each port at most once")
    if not 0 <= body.seconds <= 0xFFFF:
        raise ValueError("seconds must fit 16 bits")
    out = bytearray([body.mode])
    if body.mode in (Mode.IPV4, Mode.IPV6):
        if body.address is None or body.address.version != int(body.mode):
            raise ValueError("explicit mode needs an address of that family")
        out += body.address.packed
    elif body.address is not None:
        raise ValueError("only explicit modes carry an address")
    out += body.seconds.to_bytes(2, "big") + bytes([len(body.requests)])
    for request in body.requests:
        out += bytes([request.proto_number]) + request.port.to_bytes(2, "big")
    return bytes(out)


def decode_body(data: bytes) -> tuple[Body, int] | None:
    """Parse a body; returns it and the bytes it used, or None if malformed."""
    if not data:
        return None
    try:
        mode = Mode(data[0])
    except ValueError:
        return None
    offset = 1
    address: IPAddress | None = None
    if mode in (Mode.IPV4, Mode.IPV6):
        size = 4 if mode == Mode.IPV4 else 16
        if len(data) < offset + size:
            return None
        address = ipaddress.ip_address(data[offset : offset + size])
        offset += size
    if len(data) < offset + 3:
        return None
    seconds = int.from_bytes(data[offset : offset + 2], "big")
    count = data[offset + 2]
    offset += 3
    if not 1 <= count <= MAX_REQUESTS or len(data) < offset + 3 * count:
        return None
    requests: list[Request] = []
    for _ in range(count):
        proto = PROTOCOL_NAMES.get(data[offset])
        port = int.from_bytes(data[offset + 1 : offset + 3], "big")
        if proto is None or port == 0:
            return None
        request = Request(proto, port)
        if request in requests:  # one meaning per body: each port at most once
            return None
        requests.append(request)
        offset += 3
    return Body(mode, tuple(requests), seconds, address), offset


def _aad(sealed_header: bytes, source: IPAddress | None) -> bytes:
    return AAD_CONTEXT + sealed_header + (source.packed if source is not None else b"")


def seal(
    obfuscator: Obfuscator,
    key_id: int,
    time: int,
    body: Body,
    *,
    aead_key: bytes,
    signing_key: Ed25519PrivateKey | None = None,
    server_id: bytes | None = None,
    source: IPAddress | None = None,
    random: bytes | None = None,
) -> bytes:
    """Build a datagram.

    ``aead_key`` is the person's derived key (kind 0) or the server's wire
    key (kind 1, when ``signing_key`` is given, with the server's
    ``server_id``). ``source`` is the address the server will see, required
    when ``body.mode`` is SOURCE.
    """
    if (signing_key is not None) != (server_id is not None):
        raise ValueError("a signed datagram needs the server id, an unsigned one none")
    if not 1 <= key_id <= MAX_KEY_ID or not 0 <= time <= MAX_TIME:
        raise ValueError("key id or time out of range")
    if (body.mode == Mode.SOURCE) != (source is not None):
        raise ValueError("mode SOURCE needs the source address, other modes none")
    kind = Kind.SIGNED if signing_key is not None else Kind.AEAD
    random = os.urandom(9) if random is None else random
    if len(random) != 9:
        raise ValueError("the header takes 9 random bytes")
    plain_header = bytes([VERSION << 4 | kind, key_id >> 8, key_id & 0xFF]) + time.to_bytes(4, "big") + random
    sealed_header = obfuscator.encrypt_block(plain_header)
    payload = encode_body(body)
    if signing_key is not None:
        assert server_id is not None  # checked above
        payload += signing_key.sign(signed_message(server_id, plain_header, payload, source))
    aad = _aad(sealed_header, source if body.mode == Mode.SOURCE else None)
    return sealed_header + ChaCha20Poly1305(aead_key).encrypt(sealed_header[:12], payload, aad)


def signed_message(server_id: bytes, plain_header: bytes, body: bytes, source: IPAddress | None) -> bytes:
    """What a kind 1 signature covers: the server, the header, the body and ``B``."""
    if len(server_id) != SERVER_ID:
        raise ValueError(f"a server id is {SERVER_ID} bytes")
    return SIGN_CONTEXT + server_id + plain_header + body + (source.packed if source is not None else b"")


def open_header(obfuscator: Obfuscator, data: bytes) -> Header | None:
    """Decrypt and check the header; None for anything not ours."""
    if not HEADER + 7 + TAG <= len(data) <= MAX_SIZE:
        return None
    sealed = data[:HEADER]
    plain = obfuscator.decrypt_block(sealed)
    if plain[0] >> 4 != VERSION or (plain[0] & 0x0F) > Kind.SIGNED:
        return None
    return Header(
        kind=Kind(plain[0] & 0x0F),
        key_id=plain[1] << 8 | plain[2],
        time=int.from_bytes(plain[3:7], "big"),
        sealed=sealed,
        plain=plain,
    )


def open_body(
    header: Header,
    data: bytes,
    aead: ChaCha20Poly1305,
    source: IPAddress,
    verify_key: Ed25519PublicKey | None = None,
    server_id: bytes | None = None,
) -> Body | Reason:
    """Authenticate and parse the body; the Body, or why it is refused.

    The AEAD is tried bound to ``source`` first (mode SOURCE), then unbound,
    because the mode is only known after decryption. Refused as BAD_MAC:
    no ``B`` opens it, the mode names another ``B`` than the one that opened
    it, or the signature fails; as MALFORMED: the plaintext is not exactly
    one body (and, for kind 1, one signature).
    """
    ciphertext = data[HEADER:]
    nonce = header.sealed[:12]
    for bound in (source, None):
        try:
            payload = aead.decrypt(nonce, ciphertext, _aad(header.sealed, bound))
        except InvalidTag:
            continue
        parsed = decode_body(payload)
        if parsed is None:
            return Reason.MALFORMED
        body, used = parsed
        if (body.mode == Mode.SOURCE) != (bound is not None):
            return Reason.BAD_MAC
        if header.kind == Kind.SIGNED:
            if len(payload) != used + SIGNATURE:
                return Reason.MALFORMED
            if verify_key is None or server_id is None:
                return Reason.BAD_MAC
            try:
                verify_key.verify(payload[used:], signed_message(server_id, header.plain, payload[:used], bound))
            except InvalidSignature:
                return Reason.BAD_MAC
        elif len(payload) != used:
            return Reason.MALFORMED
        return body
    return Reason.BAD_MAC
