"""Learning our public address with a STUN binding request (RFC 8489).

A knock through a resolver, or from behind NAT, must name the address the
server will see, which the knocking machine does not know. A STUN server
tells it: it echoes the source address of our request, XORed with the
magic cookie so that NATs rewriting addresses in payloads leave it alone.
Encoding and decoding are pure; :func:`public_address` does the I/O.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Sequence

from spa.core import addresses
from spa.core.events import IPAddress
from spa.errors import SpaError

MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
XOR_MAPPED_ADDRESS = 0x0020
MAPPED_ADDRESS = 0x0001  # RFC 3489 servers answer with this only
DEFAULT_PORT = 3478
_HEADER = struct.Struct("!HHI12s")


class StunError(SpaError):
    """No STUN server told us our address."""


def request(transaction: bytes) -> bytes:
    """A binding request with no attributes: 20 bytes."""
    if len(transaction) != 12:
        raise ValueError("a STUN transaction id is 12 bytes")
    return _HEADER.pack(BINDING_REQUEST, 0, MAGIC_COOKIE, transaction)


def mapped_address(response: bytes, transaction: bytes) -> IPAddress | None:
    """The address a binding success response reports, or None if it is not one for us."""
    if len(response) < _HEADER.size:
        return None
    kind, length, cookie, echoed = _HEADER.unpack_from(response)
    if kind != BINDING_SUCCESS or cookie != MAGIC_COOKIE or echoed != transaction:
        return None
    if length + _HEADER.size > len(response) or length % 4:
        return None
    position, end = _HEADER.size, _HEADER.size + length
    plain: IPAddress | None = None
    while position + 4 <= end:
        attribute, size = struct.unpack_from("!HH", response, position)
        value = response[position + 4 : position + 4 + size]
        position += 4 + size + (-size % 4)  # attributes are padded to 4 bytes
        if len(value) != size or size < 8:
            continue
        family = value[1]
        if attribute == XOR_MAPPED_ADDRESS:
            key = struct.pack("!I", MAGIC_COOKIE) + transaction
            raw = value[4:]
            xored = bytes(a ^ b for a, b in zip(raw, key, strict=False))
            address = _address(family, xored)
            if address is not None:
                return address
        elif attribute == MAPPED_ADDRESS:
            plain = _address(family, value[4:])
    return plain


def answer_from(asked: tuple, peer: tuple, data: bytes, transaction: bytes) -> IPAddress | None:
    """The mapped address in ``data`` if it is a sane answer from the server asked.

    Anyone can send us a UDP packet; an answer from another address or port
    is ignored, like one with another transaction id. The address must be
    one a grant could open: not unspecified, multicast or IPv4-mapped.
    """
    if _endpoint(peer) != _endpoint(asked):
        return None
    found = mapped_address(data, transaction)
    if found is None or found.is_unspecified or found.is_multicast or addresses.is_mapped(found):
        return None
    return found


def _endpoint(sockaddr: tuple) -> tuple[IPAddress, int]:
    return addresses.from_socket(sockaddr[0]), sockaddr[1]


def _address(family: int, packed: bytes) -> IPAddress | None:
    if family == 1 and len(packed) == 4:
        return ipaddress.IPv4Address(packed)
    if family == 2 and len(packed) == 16:
        return ipaddress.IPv6Address(packed)
    return None


def parse_server(text: str) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` -> (host, port); ValueError for a bad port."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, _port(rest[1:]) if rest.startswith(":") else DEFAULT_PORT
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, _port(port)
    return text, DEFAULT_PORT


def _port(text: str) -> int:
    # getaddrinfo takes a port modulo 65536 (70000 would ask port 4464), and
    # int() reads any Unicode digit: accept only what a person means.
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
        raise ValueError(f"STUN port must be 1-65535, not {text!r}")
    return int(text)


def public_address(servers: Sequence[str], timeout: float = 1.0, tries: int = 2) -> IPAddress:
    """Ask each server in turn (UDP, a retry each) until one answers."""
    problems = []
    for server in servers:
        try:
            host, port = parse_server(server)
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except (OSError, ValueError) as problem:
            problems.append(f"{server}: {problem}")
            continue
        family, _, _, _, address = infos[0]
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            transaction = os.urandom(12)
            for _ in range(tries):
                try:
                    sock.sendto(request(transaction), address)
                    while True:
                        data, peer = sock.recvfrom(2048)
                        found = answer_from(address, peer, data, transaction)
                        if found is not None:
                            return found
                except socket.timeout:
                    continue
                except OSError as problem:
                    problems.append(f"{server}: {problem.strerror or problem}")
                    break
            else:
                problems.append(f"{server}: no answer")
    raise StunError("could not learn the public address by STUN (" + "; ".join(problems) + "); give --ip A.B.C.D")
