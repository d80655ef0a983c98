"""Tokens from a client key file, for every carrier. Pure code, no I/O.

The same bytes the server's gate checks (docs/protocol.md); the one place the
package builds knocks, used by ``spa knock``/``spa token`` and by the tests.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from spa.core import addresses, compact, datagram, encoding, kdf, sequence
from spa.core.compact import Obfuscator
from spa.core.events import IPAddress, Request
from spa.core.keys import ClientKey
from spa.errors import KeyFileError, SpaError


def _mac_key(key: ClientKey) -> bytes:
    if key.secret is None:
        raise KeyFileError(f"key {key.name} is an Ed25519 key: it can only knock by UDP")
    return kdf.derive(key.secret, kdf.TOKEN_MAC)


def _nameable(address: IPAddress | None) -> IPAddress | None:
    """Refuse an address the server refuses: an IPv4 host must be named as IPv4."""
    why = None if address is None else addresses.refusal(address)
    if why:
        raise SpaError(f"{why} (write {address.ipv4_mapped})")  # type: ignore[union-attr]
    return address


def compact_token(key: ClientKey, time: int, address: IPAddress | None, request: Request | None = None) -> bytes:
    """16 bytes for ``ping -p`` or a DNS label queried directly; opens ``address`` (None: unbound)."""
    index = key.request_index(request or key.default_request)
    return compact.seal_compact(Obfuscator(key.obfuscation_key), _mac_key(key), key.key_id, time, index,
                                _nameable(address))


def extended_token(key: ClientKey, time: int, address: IPAddress, request: Request | None = None) -> bytes:
    """20 or 32 bytes naming ``address``: for DNS through resolvers, and NAT."""
    index = key.request_index(request or key.default_request)
    named = _nameable(address)
    assert named is not None  # an extended token always names its address
    return compact.seal_extended(Obfuscator(key.obfuscation_key), _mac_key(key), key.key_id, time, index, named)


def spa_datagram(
    key: ClientKey,
    time: int,
    requests: tuple[Request, ...] = (),
    seconds: int = 0,
    address: IPAddress | None = None,
    source: IPAddress | None = None,
) -> bytes:
    """One UDP SPA datagram. ``address`` names what to open; else ``source`` (as the
    server will see it) binds it to the sender; with neither it is unbound."""
    requests = tuple(dict.fromkeys(requests)) or (key.default_request,)  # each port once (docs/protocol.md)
    for request in requests:
        key.request_index(request)  # refuse ports the key may not open, here and clearly
    address, source = _nameable(address), _nameable(source)
    if address is not None:
        mode = datagram.Mode.IPV4 if address.version == 4 else datagram.Mode.IPV6
        body = datagram.Body(mode, requests, seconds, address)
        source = None
    elif source is not None:
        body = datagram.Body(datagram.Mode.SOURCE, requests, seconds)
    else:
        body = datagram.Body(datagram.Mode.UNBOUND, requests, seconds)
    obfuscator = Obfuscator(key.obfuscation_key)
    if key.signing_key is not None:
        signer = Ed25519PrivateKey.from_private_bytes(key.signing_key)
        wire = kdf.derive(key.obfuscation_key, kdf.WIRE)
        server_id = kdf.derive(key.obfuscation_key, kdf.SERVER_ID)
        return datagram.seal(obfuscator, key.key_id, time, body, aead_key=wire, signing_key=signer,
                             server_id=server_id, source=source)
    assert key.secret is not None
    aead = kdf.derive(key.secret, kdf.DATAGRAM_AEAD)
    return datagram.seal(obfuscator, key.key_id, time, body, aead_key=aead, source=source)


def ping_pattern(token: bytes) -> str:
    """The hex digits for ``ping -p`` (a 16-byte token is exactly iputils' maximum)."""
    return encoding.to_pattern(token)


def dns_name(token: bytes, zone: str) -> str:
    """``<label>.<zone>.`` with a trailing dot, so no resolver appends a search domain."""
    return f"{encoding.to_label(token)}.{zone.rstrip('.')}."


def otp_sequence(key: ClientKey, time: float, rule: sequence.SequenceRule,
                 request: Request | None = None) -> tuple[int, ...]:
    """The one-time port sequence for ``knock`` at ``time``."""
    if key.secret is None:
        raise KeyFileError(f"key {key.name} is an Ed25519 key: it can only knock by UDP")
    index = key.request_index(request or key.default_request)
    return sequence.ports(kdf.derive(key.secret, kdf.SEQUENCE), rule.step_at(time), index, rule)
