#!/usr/bin/env python3
"""spa-knock.py: knock an spa server with nothing but this file and a key file.

Copy this one file and your ``NAME.spakey`` to any machine with Python 3.8 or
newer (Linux, macOS, Windows) and run it::

    python3 spa-knock.py --key alice.spakey            # one UDP datagram (SPA)
    python3 spa-knock.py --via dns --ip 203.0.113.7    # a DNS lookup via your resolver
    python3 spa-knock.py --via icmp                    # prints a ping -p command
    py spa-knock.py --key alice.spakey                 # Windows

It imports only the standard library: AES-256 (FIPS-197) and
ChaCha20-Poly1305 (RFC 8439) are written out below, from the specifications.
Only the encrypting direction of each is needed: a client builds compact and
extended tokens and datagram headers with AES encryption (docs/protocol.md
never asks a client to decrypt) and seals datagram bodies with the AEAD.

The bytes are those of ``spa.client.tokens`` and docs/test-vectors.json
(docs/protocol.md has the layouts); tests/unit/test_stdlib_client.py checks
both, and tests/e2e/test_stdlib_client_knocks.py knocks a real ``spa serve``.

Speed, measured on the project's 2-core test machine with CPython 3.11
(medians): the cryptography of one knock is 0.19 ms for a datagram (AES key
schedule and header block, HMAC sub-key, ChaCha20-Poly1305 seal) and
0.04 ms for an extended token, far under the 50 ms budget; the whole
``python3 -I -S spa-knock.py --print`` process, interpreter start-up and
compiling this file included, takes about 50 ms.
"""

import argparse
import base64
import hashlib
import hmac
import ipaddress
import os
import re
import shlex
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from typing import Dict, List, NamedTuple, NoReturn, Optional, Sequence, Tuple, Union

if sys.version_info < (3, 8):  # pragma: no cover - the file still parses on 3.6/3.7 to say this
    sys.stderr.write("spa-knock.py: error: needs Python 3.8 or newer\n")
    sys.exit(2)

PROG = "spa-knock.py"
KEY_FORMAT = "spa-key-1"
DEFAULT_UDP_PORT = 62201
DNS_PORT = 53
DNS_TIMEOUT = 2.0  # seconds per try; the spa server answers at once
DNS_TRIES = 3
PROTOCOLS = {"tcp": 6, "udp": 17}

Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Request = Tuple[str, int]  # ("tcp", 22)


class KnockError(Exception):
    """Something the person must fix or know: printed as one line, never a traceback."""


# --------------------------------------------------------------------------
# AES-256, encryption only (FIPS-197)
# --------------------------------------------------------------------------


def _xtime(a: int) -> int:
    """Multiply by x (that is, 2) in GF(2^8) modulo x^8 + x^4 + x^3 + x + 1."""
    a <<= 1
    return a ^ 0x11B if a & 0x100 else a


def _make_sbox() -> List[int]:
    """The S-box of FIPS-197 section 5.1.1: inverse in GF(2^8), then the affine map.

    Inverses come from log/antilog tables to the generator 3 (255 steps).
    """
    exp = [0] * 255
    log = [0] * 256
    value = 1
    for power in range(255):
        exp[power] = value
        log[value] = power
        value ^= _xtime(value)  # value * 3
    sbox = []
    for a in range(256):
        b = 0 if a == 0 else exp[(255 - log[a]) % 255]
        s = b
        for shift in (1, 2, 3, 4):
            s ^= ((b << shift) | (b >> (8 - shift))) & 0xFF
        sbox.append(s ^ 0x63)
    return sbox


_SBOX = _make_sbox()


def _make_tables() -> Tuple[List[int], List[int], List[int], List[int]]:
    """SubBytes + MixColumns per input byte, one 32-bit column word per row.

    T0[a] is column (2s, s, s, 3s) for s = S(a); T1..T3 are it rotated by
    8, 16, 24 bits, for the bytes that ShiftRows brings from rows 1..3.
    """
    t0 = []
    for a in range(256):
        s = _SBOX[a]
        s2 = _xtime(s)
        t0.append((s2 << 24) | (s << 16) | (s << 8) | (s2 ^ s))
    t1 = [((w >> 8) | (w << 24)) & 0xFFFFFFFF for w in t0]
    t2 = [((w >> 16) | (w << 16)) & 0xFFFFFFFF for w in t0]
    t3 = [((w >> 24) | (w << 8)) & 0xFFFFFFFF for w in t0]
    return t0, t1, t2, t3


_T0, _T1, _T2, _T3 = _make_tables()


def _sub_word(w: int) -> int:
    s = _SBOX
    return (s[w >> 24] << 24) | (s[(w >> 16) & 0xFF] << 16) | (s[(w >> 8) & 0xFF] << 8) | s[w & 0xFF]


class AES256:
    """AES with a 256-bit key (Nk = 8, Nr = 14): the forward cipher on one block."""

    ROUNDS = 14

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("AES-256 takes a 32-byte key")
        words = list(struct.unpack(">8I", key))
        rcon = 1
        for i in range(8, 4 * (self.ROUNDS + 1)):
            temp = words[i - 1]
            if i % 8 == 0:
                temp = _sub_word(((temp << 8) | (temp >> 24)) & 0xFFFFFFFF) ^ (rcon << 24)
                rcon = _xtime(rcon)
            elif i % 8 == 4:
                temp = _sub_word(temp)
            words.append(words[i - 8] ^ temp)
        self._words = words

    def encrypt_block(self, block: bytes) -> bytes:
        if len(block) != 16:
            raise ValueError("AES encrypts 16-byte blocks")
        w = self._words
        t0, t1, t2, t3 = _T0, _T1, _T2, _T3
        a, b, c, d = struct.unpack(">4I", block)
        s0, s1, s2, s3 = a ^ w[0], b ^ w[1], c ^ w[2], d ^ w[3]
        k = 4
        for _ in range(self.ROUNDS - 1):
            n0 = t0[s0 >> 24] ^ t1[(s1 >> 16) & 0xFF] ^ t2[(s2 >> 8) & 0xFF] ^ t3[s3 & 0xFF] ^ w[k]
            n1 = t0[s1 >> 24] ^ t1[(s2 >> 16) & 0xFF] ^ t2[(s3 >> 8) & 0xFF] ^ t3[s0 & 0xFF] ^ w[k + 1]
            n2 = t0[s2 >> 24] ^ t1[(s3 >> 16) & 0xFF] ^ t2[(s0 >> 8) & 0xFF] ^ t3[s1 & 0xFF] ^ w[k + 2]
            n3 = t0[s3 >> 24] ^ t1[(s0 >> 16) & 0xFF] ^ t2[(s1 >> 8) & 0xFF] ^ t3[s2 & 0xFF] ^ w[k + 3]
            s0, s1, s2, s3 = n0, n1, n2, n3
            k += 4
        s = _SBOX
        out = []
        for x0, x1, x2, x3 in ((s0, s1, s2, s3), (s1, s2, s3, s0), (s2, s3, s0, s1), (s3, s0, s1, s2)):
            out.append(((s[x0 >> 24] << 24) | (s[(x1 >> 16) & 0xFF] << 16)
                        | (s[(x2 >> 8) & 0xFF] << 8) | s[x3 & 0xFF]) ^ w[k])
            k += 1
        return struct.pack(">4I", *out)


def aes256_encrypt_block(key: bytes, block: bytes) -> bytes:
    return AES256(key).encrypt_block(block)


# --------------------------------------------------------------------------
# ChaCha20-Poly1305 AEAD, sealing only (RFC 8439)
# --------------------------------------------------------------------------

_MASK32 = 0xFFFFFFFF
_SIGMA = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)  # "expand 32-byte k"


def _quarter_round(x: List[int], a: int, b: int, c: int, d: int) -> None:
    """RFC 8439 section 2.1, on four words of the state."""
    x[a] = (x[a] + x[b]) & _MASK32
    v = x[d] ^ x[a]
    x[d] = ((v << 16) | (v >> 16)) & _MASK32
    x[c] = (x[c] + x[d]) & _MASK32
    v = x[b] ^ x[c]
    x[b] = ((v << 12) | (v >> 20)) & _MASK32
    x[a] = (x[a] + x[b]) & _MASK32
    v = x[d] ^ x[a]
    x[d] = ((v << 8) | (v >> 24)) & _MASK32
    x[c] = (x[c] + x[d]) & _MASK32
    v = x[b] ^ x[c]
    x[b] = ((v << 7) | (v >> 25)) & _MASK32


def chacha20_block(key: bytes, counter: int, nonce: bytes) -> bytes:
    """RFC 8439 section 2.3: 64 bytes of key stream for one block counter."""
    state = list(_SIGMA) + list(struct.unpack("<8I", key)) + [counter & _MASK32] + list(struct.unpack("<3I", nonce))
    x = list(state)
    for _ in range(10):
        _quarter_round(x, 0, 4, 8, 12)
        _quarter_round(x, 1, 5, 9, 13)
        _quarter_round(x, 2, 6, 10, 14)
        _quarter_round(x, 3, 7, 11, 15)
        _quarter_round(x, 0, 5, 10, 15)
        _quarter_round(x, 1, 6, 11, 12)
        _quarter_round(x, 2, 7, 8, 13)
        _quarter_round(x, 3, 4, 9, 14)
    return struct.pack("<16I", *((x[i] + state[i]) & _MASK32 for i in range(16)))


def chacha20_xor(key: bytes, counter: int, nonce: bytes, data: bytes) -> bytes:
    """RFC 8439 section 2.4: encrypt (or decrypt) ``data`` from block ``counter`` on."""
    out = bytearray()
    for offset in range(0, len(data), 64):
        stream = chacha20_block(key, counter + offset // 64, nonce)
        chunk = data[offset:offset + 64]
        out += bytes(p ^ k for p, k in zip(chunk, stream))
    return bytes(out)


_P1305 = (1 << 130) - 5


def poly1305_mac(one_time_key: bytes, message: bytes) -> bytes:
    """RFC 8439 section 2.5: the 16-byte tag of ``message``."""
    r = int.from_bytes(one_time_key[:16], "little") & 0x0FFFFFFC0FFFFFFC0FFFFFFC0FFFFFFF
    s = int.from_bytes(one_time_key[16:32], "little")
    accumulator = 0
    for offset in range(0, len(message), 16):
        chunk = message[offset:offset + 16] + b"\x01"
        accumulator = (accumulator + int.from_bytes(chunk, "little")) * r % _P1305
    return ((accumulator + s) & ((1 << 128) - 1)).to_bytes(16, "little")


def _pad16(data: bytes) -> bytes:
    return b"\x00" * (-len(data) % 16)


def chacha20_poly1305_encrypt(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    """RFC 8439 section 2.8: ciphertext followed by the 16-byte tag."""
    if len(key) != 32 or len(nonce) != 12:
        raise ValueError("ChaCha20-Poly1305 takes a 32-byte key and a 12-byte nonce")
    one_time_key = chacha20_block(key, 0, nonce)[:32]
    ciphertext = chacha20_xor(key, 1, nonce, plaintext)
    mac_data = (aad + _pad16(aad) + ciphertext + _pad16(ciphertext)
                + struct.pack("<QQ", len(aad), len(ciphertext)))
    return ciphertext + poly1305_mac(one_time_key, mac_data)


# --------------------------------------------------------------------------
# Token formats (docs/protocol.md)
# --------------------------------------------------------------------------

TOKEN_MAC = b"spa1 token mac"
DATAGRAM_AEAD = b"spa1 datagram aead"
MAC_CONTEXT = b"spa1 compact"
AAD_CONTEXT = b"spa1 datagram"

MODE_SOURCE, MODE_UNBOUND, MODE_EXPLICIT = 0, 1, 2  # compact and extended tokens
DATAGRAM_SOURCE, DATAGRAM_UNBOUND, DATAGRAM_IPV4, DATAGRAM_IPV6 = 0, 1, 4, 6


def derive(secret: bytes, purpose: bytes) -> bytes:
    """A 32-byte sub-key: HMAC-SHA256(secret, purpose)."""
    return hmac.new(secret, purpose, hashlib.sha256).digest()


def _head(mode: int, key_id: int, when: int, index: int) -> bytes:
    if not 1 <= key_id <= 0xFFFF:
        raise KnockError("key id must be 1-65535, not {}".format(key_id))
    if not 0 <= when <= 0xFFFFFFFF:
        raise KnockError("time must be a Unix time that fits 32 bits, not {}".format(when))
    if not 0 <= index <= 0xFF:
        raise KnockError("request index must be 0-255, not {}".format(index))
    return bytes([0x10 | mode]) + key_id.to_bytes(2, "big") + when.to_bytes(4, "big") + bytes([index])


def _mac(mac_key: bytes, head: bytes, address: bytes) -> bytes:
    return hmac.new(mac_key, MAC_CONTEXT + head + address, hashlib.sha256).digest()[:8]


def seal_compact(obfuscation_key: bytes, mac_key: bytes, key_id: int, when: int, index: int,
                 address: Optional[Address]) -> bytes:
    """16 bytes: bound to ``address`` as the server will see it (mode 0), or unbound (None)."""
    mode = MODE_UNBOUND if address is None else MODE_SOURCE
    head = _head(mode, key_id, when, index)
    packed = b"" if address is None else address.packed
    return AES256(obfuscation_key).encrypt_block(head + _mac(mac_key, head, packed))


def seal_extended(obfuscation_key: bytes, mac_key: bytes, key_id: int, when: int, index: int,
                  address: Address) -> bytes:
    """20 or 32 bytes naming ``address``, wherever the query comes from (mode 2)."""
    head = _head(MODE_EXPLICIT, key_id, when, index)
    packed = address.packed
    cipher = AES256(obfuscation_key)
    token = cipher.encrypt_block(head + _mac(mac_key, head, packed))
    pad = cipher.encrypt_block(token)
    return token + bytes(a ^ b for a, b in zip(packed, pad))


def encode_body(mode: int, requests: Sequence[Request], seconds: int = 0,
                address: Optional[Address] = None) -> bytes:
    """The datagram body: mode | [address] | seconds | n | n x (proto | port)."""
    if not 1 <= len(requests) <= 16:
        raise KnockError("a datagram asks for 1-16 ports")
    if len(set(requests)) != len(requests):
        raise KnockError("a datagram asks for each port at most once")
    if not 0 <= seconds <= 0xFFFF:
        raise KnockError("--seconds must be 0-65535")
    out = bytearray([mode])
    if mode in (DATAGRAM_IPV4, DATAGRAM_IPV6):
        if address is None or address.version != mode:
            raise ValueError("an explicit mode needs an address of its family")
        out += address.packed
    out += seconds.to_bytes(2, "big") + bytes([len(requests)])
    for proto, port in requests:
        out += bytes([PROTOCOLS[proto]]) + port.to_bytes(2, "big")
    return bytes(out)


def seal_datagram(obfuscation_key: bytes, aead_key: bytes, key_id: int, when: int,
                  requests: Sequence[Request], seconds: int = 0, address: Optional[Address] = None,
                  source: Optional[Address] = None, random: Optional[bytes] = None) -> bytes:
    """One SPA datagram, kind 0 (AEAD under the person's key).

    ``address`` names what to open (mode 4/6); else ``source``, the address
    the server will see, binds it to the sender (mode 0); with neither it is
    unbound (mode 1). ``random`` is the header's 9 random bytes (tests fix it).
    """
    if address is not None:
        mode = DATAGRAM_IPV4 if address.version == 4 else DATAGRAM_IPV6
        source = None
    elif source is not None:
        mode = DATAGRAM_SOURCE
    else:
        mode = DATAGRAM_UNBOUND
    body = encode_body(mode, requests, seconds, address)
    random = os.urandom(9) if random is None else random
    if len(random) != 9:
        raise ValueError("the header takes 9 random bytes")
    plain_header = bytes([0x20]) + _head(0, key_id, when, 0)[1:7] + random
    header = AES256(obfuscation_key).encrypt_block(plain_header)
    aad = AAD_CONTEXT + header + (source.packed if source is not None else b"")
    return header + chacha20_poly1305_encrypt(aead_key, header[:12], body, aad)


def to_label(data: bytes) -> str:
    """Lowercase unpadded base32 (RFC 4648): one DNS label, at most 63 characters."""
    label = base64.b32encode(data).decode("ascii").rstrip("=").lower()
    if len(label) > 63:
        raise ValueError("{} bytes do not fit one DNS label".format(len(data)))
    return label


def dns_name(token: bytes, zone: str) -> str:
    """``<label>.<zone>.``; the trailing dot keeps resolvers from adding a search domain."""
    return "{}.{}.".format(to_label(token), zone.strip("."))


def dns_query(name: str, ident: int) -> bytes:
    """A minimal DNS query: one question, type A, class IN, recursion desired."""
    labels = name.rstrip(".").split(".")
    wire = bytearray()
    for label in labels:
        raw = label.encode("ascii")
        if not 1 <= len(raw) <= 63:
            raise KnockError("cannot query {!r}: every label must be 1-63 characters".format(name))
        wire += bytes([len(raw)]) + raw
    wire += b"\x00"
    if len(wire) > 255:
        raise KnockError("cannot query {!r}: the name is too long".format(name))
    return struct.pack(">6H", ident, 0x0100, 1, 0, 0, 0) + bytes(wire) + struct.pack(">2H", 1, 1)


# --------------------------------------------------------------------------
# The key file (format "spa-key-1": flat ``option = value`` lines)
# --------------------------------------------------------------------------


class Key(NamedTuple):
    name: str
    key_id: int
    server: str
    zone: str
    udp_port: int
    open: Tuple[Request, ...]
    default_open: Request
    obfuscation_key: bytes
    secret: bytes
    path: str

    @property
    def mac_key(self) -> bytes:
        return derive(self.secret, TOKEN_MAC)

    @property
    def aead_key(self) -> bytes:
        return derive(self.secret, DATAGRAM_AEAD)

    def index(self, request: Request) -> int:
        """The position a compact token uses to name ``request``."""
        if request not in self.open:
            raise KnockError("this key may open {}, not {}".format(
                ", ".join(map(format_request, self.open)), format_request(request)))
        return self.open.index(request)


def format_request(request: Request) -> str:
    return "{}/{}".format(*request)


def parse_request(text: str) -> Request:
    """``tcp/22``, ``udp/51820``, or a bare ``22`` (tcp)."""
    proto, sep, port = text.strip().lower().rpartition("/")
    if not sep:
        proto = "tcp"
    if proto not in PROTOCOLS or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError("expected proto/port such as tcp/22, got {!r}".format(text.strip()))
    return proto, int(port)


_OPTION = re.compile(r"^[A-Za-z0-9_-]+$")
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}


def _read_string(text: str, where: str) -> Tuple[str, str]:
    """A TOML basic string at the start of ``text``; returns it and what follows."""
    out = []
    i = 1
    while i < len(text):
        char = text[i]
        if char == '"':
            return "".join(out), text[i + 1:]
        if char == "\\":
            if i + 1 >= len(text) or text[i + 1] not in _ESCAPES:
                raise KnockError("{}: unsupported escape in a string".format(where))
            out.append(_ESCAPES[text[i + 1]])
            i += 2
            continue
        out.append(char)
        i += 1
    raise KnockError("{}: unterminated string".format(where))


def parse_key_text(text: str, path: str) -> Tuple[Dict[str, Union[str, int, bool]], Dict[str, int]]:
    """The options of a key file and the line of each; strings, integers and booleans."""
    values = {}  # type: Dict[str, Union[str, int, bool]]
    lines = {}  # type: Dict[str, int]
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        where = "{}:{}".format(path, number)
        if not line or line.startswith("#"):
            continue
        option, sep, rest = line.partition("=")
        option = option.strip()
        if not sep or not _OPTION.match(option):
            raise KnockError("{}: expected option = value (is this an spa client key file?)".format(where))
        if option in values:
            raise KnockError("{}: {}: given twice".format(where, option))
        rest = rest.strip()
        value = None  # type: Optional[Union[str, int, bool]]
        if rest.startswith('"'):
            value, rest = _read_string(rest, where)
        elif rest.startswith("'"):
            end = rest.find("'", 1)
            if end < 0:
                raise KnockError("{}: unterminated string".format(where))
            value, rest = rest[1:end], rest[end + 1:]
        else:
            word, _, comment = rest.partition("#")
            word = word.strip()
            rest = "#" + comment if comment else ""
            if word in ("true", "false"):
                value = word == "true"
            elif re.fullmatch(r"[+-]?[0-9]+(_[0-9]+)*", word):
                value = int(word.replace("_", ""))
            else:
                raise KnockError("{}: {}: expected a quoted string or a number".format(where, option))
        rest = rest.strip()
        if rest and not rest.startswith("#"):
            raise KnockError("{}: {}: unexpected text after the value".format(where, option))
        values[option] = value
        lines[option] = number
    return values, lines


def check_private(path: str) -> None:
    """Refuse a key file that group or others can read (POSIX), saying how to fix it."""
    if _windows():
        return  # NTFS permissions are ACLs, not mode bits
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise KnockError(
            "{} is readable by group or others (mode {:04o}); "
            "secrets must be private: run 'chmod 600 {}'".format(path, mode, path))


def load_key(path: str) -> Key:
    """Read and check a client key file."""
    if not os.path.isfile(path):
        raise KnockError("{}: no such key file".format(path))
    check_private(path)
    try:
        with open(path, encoding="utf-8-sig") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as problem:
        raise KnockError("{}: cannot read the key file: {}".format(path, problem)) from None
    values, lines = parse_key_text(text, path)

    def fail(option: str, message: str) -> KnockError:
        where = "{}:{}".format(path, lines[option]) if option in lines else path
        return KnockError("{}: {}: {}".format(where, option, message))

    def string(option: str, default: Optional[str] = None) -> str:
        value = values.get(option, default)
        if value is None:
            raise fail(option, "missing")
        if not isinstance(value, str):
            raise fail(option, "expected a quoted string")
        return value

    def hex_bytes(option: str) -> bytes:
        try:
            raw = bytes.fromhex(string(option))
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise fail(option, "expected 64 hex digits")
        return raw

    def requests(option: str) -> Tuple[Request, ...]:
        text = string(option)
        try:
            parsed = tuple(parse_request(part) for part in text.split(","))
        except ValueError as problem:
            raise fail(option, str(problem)) from None
        return parsed

    if values.get("format") != KEY_FORMAT:
        raise fail("format", 'expected "{}" (is this an spa client key file?)'.format(KEY_FORMAT))
    name = string("name")
    if not re.fullmatch(r"[a-z][a-z0-9]{0,11}", name):
        raise fail("name", "expected 1-12 lowercase letters and digits, starting with a letter")
    key_id = values.get("key_id")
    if not isinstance(key_id, int) or isinstance(key_id, bool) or not 1 <= key_id <= 0xFFFF:
        raise fail("key_id", "expected a whole number 1-65535")
    port = values.get("udp_port", DEFAULT_UDP_PORT)
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise fail("udp_port", "expected a port 1-65535")
    allowed = requests("open")
    default = requests("default_open")[0] if "default_open" in values else allowed[0]
    if default not in allowed:
        raise fail("default_open", "must be one of the ports in open")
    if "secret" not in values:
        if "signing_key" in values:
            raise KnockError("{}: this is an Ed25519 key (signing_key, no secret): spa-knock.py knocks "
                             "with a shared secret; knock with the spa package's client instead".format(path))
        raise fail("secret", "missing")
    return Key(
        name=name,
        key_id=key_id,
        server=string("server", "").strip(),
        zone=string("zone", "").strip().strip(".").lower(),
        udp_port=port,
        open=allowed,
        default_open=default,
        obfuscation_key=hex_bytes("obfuscation_key"),
        secret=hex_bytes("secret"),
        path=path,
    )


def key_directories(environ: Dict[str, str], home: str) -> List[str]:
    """Where a key file is looked for: ~/.config/spa, and %APPDATA%\\spa on Windows."""
    directories = [os.path.join(home, ".config", "spa")]
    if _windows() and environ.get("APPDATA"):
        directories.append(os.path.join(environ["APPDATA"], "spa"))
    return directories


def find_key(given: Optional[str], environ: Dict[str, str], home: str) -> str:
    """--key, then $SPA_KEY, then the one ``*.spakey`` in the key directories."""
    if given:
        return given
    if environ.get("SPA_KEY"):
        return environ["SPA_KEY"]
    directories = key_directories(environ, home)
    found = []
    for directory in directories:
        try:
            names = sorted(name for name in os.listdir(directory) if name.endswith(".spakey"))
        except OSError:
            names = []
        found += [os.path.join(directory, name) for name in names]
    if len(found) == 1:
        return found[0]
    where = " or ".join(directories)
    if not found:
        raise KnockError("no key file: pass --key FILE, set SPA_KEY, or put your NAME.spakey in {}".format(where))
    raise KnockError("{} key files in {} ({}): choose one with --key".format(
        len(found), where, ", ".join(os.path.basename(path) for path in found)))


# --------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------


def resolve(host: str, port: int, family: int = 0) -> Tuple[int, tuple]:
    """The first (family, sockaddr) the OS offers for ``host``."""
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError) as problem:
        raise KnockError("cannot resolve {}: {}".format(host, getattr(problem, "strerror", None) or problem)) from None
    if not infos:
        raise KnockError("cannot resolve {}".format(host))
    return infos[0][0], infos[0][4]


def addresses_of(host: str) -> set:
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, None, 0, socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError) as problem:
        raise KnockError("cannot resolve {}: {}".format(host, getattr(problem, "strerror", None) or problem)) from None
    return {ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos}


def source_address(family: int, sockaddr: tuple) -> Address:
    """The local address the OS picks for the route to ``sockaddr``: what the
    server will see, unless a NAT rewrites it (then pass your public address
    with --ip). A connected UDP socket sends nothing."""
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(sockaddr)
            local = probe.getsockname()[0]
    except OSError as problem:
        raise KnockError("no route to {}: {} (give the address to open with --ip)".format(
            sockaddr[0], problem.strerror or problem)) from None
    return ipaddress.ip_address(local.split("%")[0])


def send_udp(family: int, sockaddr: tuple, payload: bytes) -> None:
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sender:
            sender.sendto(payload, sockaddr)
    except OSError as problem:
        raise KnockError("cannot send to {} port {}: {}".format(
            sockaddr[0], sockaddr[1], problem.strerror or problem)) from None


def ask_dns(family: int, sockaddr: tuple, name: str, timeout: float = DNS_TIMEOUT,
            tries: int = DNS_TRIES) -> Optional[int]:
    """Send an A query for ``name``; the answer's RCODE, or None if none came."""
    ident = int.from_bytes(os.urandom(2), "big")
    query = dns_query(name, ident)
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect(sockaddr)
            for _ in range(tries):
                sock.send(query)
                deadline = time.monotonic() + timeout
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    sock.settimeout(left)
                    try:
                        reply = sock.recv(4096)
                    except socket.timeout:
                        break
                    except ConnectionRefusedError:
                        raise KnockError("{} refused the DNS query (nothing listens on port {})".format(
                            sockaddr[0], sockaddr[1])) from None
                    if len(reply) >= 12 and reply[:2] == query[:2] and reply[2] & 0x80:
                        return reply[3] & 0x0F
    except OSError as problem:
        raise KnockError("cannot query {}: {}".format(sockaddr[0], problem.strerror or problem)) from None
    return None


RESOLV_CONF = "/etc/resolv.conf"


def system_resolver() -> Optional[str]:
    """The first name server of /etc/resolv.conf (POSIX), or None."""
    if _windows():
        return None
    try:
        with open(RESOLV_CONF, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    for line in lines:
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                ipaddress.ip_address(words[1].split("%")[0])
            except ValueError:
                continue
            return words[1]  # with its %scope, if link-local
    return None


def ask_system_resolver(name: str, timeout: float = 8.0) -> None:
    """Look ``name`` up through the operating system's resolver (the answer does not matter)."""
    def lookup() -> None:
        try:
            socket.getaddrinfo(name, None, 0, socket.SOCK_DGRAM)
        except (OSError, UnicodeError):
            pass  # NODATA/NXDOMAIN: the knock was still delivered
    worker = threading.Thread(target=lookup, daemon=True)
    worker.start()
    worker.join(timeout)


RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


# --------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------

DESCRIPTION = "Knock an spa server: open a protected port for your address, for a few seconds."
EPILOG = """\
examples:
  spa-knock.py                          one UDP datagram to the server named in your key
  spa-knock.py --key alice.spakey --open tcp/3389 server.example.com
  spa-knock.py --via dns --dns-server server.example.com
                                        a DNS query straight to the spa server (the one
                                        in your key): opens the address you send from
  spa-knock.py --via dns --ip 203.0.113.7
                                        a DNS query through your usual resolver, opening
                                        203.0.113.7 (your public address)
  spa-knock.py --via icmp               print the ping -p command to run (Linux/macOS)
  spa-knock.py --via dns --ip 198.51.100.7 --print
                                        print a lookup to type on another device
  py spa-knock.py --key alice.spakey    on Windows

The key is --key, else $SPA_KEY, else the one *.spakey in ~/.config/spa
(or %APPDATA%\\spa on Windows); it must be private (chmod 600).
Behind NAT, pass your public address with --ip: the server sees that one.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, "{}: error: {} (see --help)\n".format(self.prog, message))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("host", nargs="?", metavar="HOST",
                        help="the spa server (default: server in the key file)")
    parser.add_argument("--key", metavar="FILE", help="your NAME.spakey file")
    parser.add_argument("--via", choices=("udp", "dns", "icmp"), default="udp",
                        help="udp: one SPA datagram (default); dns: a DNS query carrying a token; "
                             "icmp: print a ping -p command")
    parser.add_argument("--open", action="append", metavar="PROTO/PORT",
                        help="what to open, from the key's open list (default: its default_open); "
                             "--via udp takes several")
    parser.add_argument("--ip", metavar="ADDRESS",
                        help="the address to open (your public address behind NAT; required for DNS "
                             "through a resolver); default: the address this machine sends from")
    parser.add_argument("--unbound", action="store_true",
                        help="name no address: open whatever source the server sees (the server's "
                             "policy must allow it)")
    parser.add_argument("--seconds", type=int, default=0, metavar="N",
                        help="--via udp: ask for an N-second grant (default: the server's)")
    parser.add_argument("--dns-server", metavar="ADDR",
                        help="--via dns: where to send the query: the spa server itself (then --ip is "
                             "optional) or a resolver (default: this machine's resolver; needs --ip)")
    parser.add_argument("--nslookup", action="store_true",
                        help="--via dns: run the system's nslookup instead of sending the query itself")
    parser.add_argument("--print", action="store_true", dest="print_only",
                        help="print the datagram (hex) or the command to run, send nothing")
    parser.add_argument("--at", type=int, metavar="UNIXTIME",
                        help="the token's time (default: now); for tests and reproducible output")
    family = parser.add_mutually_exclusive_group()
    family.add_argument("-4", dest="family", action="store_const", const=socket.AF_INET,
                        help="use IPv4 to reach HOST")
    family.add_argument("-6", dest="family", action="store_const", const=socket.AF_INET6,
                        help="use IPv6 to reach HOST")
    return parser


def _requests(key: Key, given: Optional[List[str]]) -> List[Request]:
    if not given:
        return [key.default_open]
    out = []
    for text in given:
        for part in text.split(","):
            try:
                request = parse_request(part)
            except ValueError as problem:
                raise KnockError("--open: {}".format(problem)) from None
            key.index(request)  # refuse ports the key may not open, here and clearly
            if request not in out:
                out.append(request)
    return out


def _address(text: Optional[str]) -> Optional[Address]:
    if text is None:
        return None
    if text.strip().lower() == "auto":
        raise KnockError("--ip auto is not supported by spa-knock.py (it would need an outside "
                         "lookup service): find your public address and pass it, e.g. --ip 203.0.113.7")
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        raise KnockError("--ip: {!r} is not an IPv4 or IPv6 address".format(text)) from None
    if address.version == 6 and address.ipv4_mapped is not None:
        # The server refuses it: an IPv4 host is named by its IPv4 address.
        raise KnockError("--ip: {} is an IPv4-mapped address: write {}".format(address, address.ipv4_mapped))
    return address


def _windows() -> bool:
    return os.name == "nt"


def _macos() -> bool:
    return sys.platform == "darwin"


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")


def knock_udp(key: Key, host: str, options: argparse.Namespace, when: int, ip: Optional[Address],
              requests: List[Request]) -> None:
    family, sockaddr = 0, ()  # type: Tuple[int, tuple]
    if not (options.print_only and (ip is not None or options.unbound)):
        family, sockaddr = resolve(host, key.udp_port, options.family or 0)
    source = None
    if ip is None and not options.unbound:
        source = source_address(family, sockaddr)
    packet = seal_datagram(key.obfuscation_key, key.aead_key, key.key_id, when, requests,
                           options.seconds, address=ip, source=source)
    if options.print_only:
        _say(packet.hex())
        return
    send_udp(family, sockaddr, packet)
    bound = "opens {}".format(ip) if ip else ("unbound" if options.unbound else "from {}".format(source))
    _say("sent an SPA datagram for {} to {} port {} ({})".format(
        ", ".join(map(format_request, requests)), sockaddr[0], sockaddr[1], bound))


def knock_dns(key: Key, host: str, options: argparse.Namespace, when: int, ip: Optional[Address],
              request: Request) -> int:
    """A DNS query for one token label under the key's zone.

    With --dns-server naming the spa server, the server sees this machine's
    address: a compact token bound to it (or an extended one with --ip).
    Through a resolver (the default, or another --dns-server) the server sees
    the resolver's address, so the token must name the address: --ip.
    """
    if not key.zone:
        raise KnockError("{}: the key file names no DNS zone (zone = ...): ask the server's admin "
                         "for it, or knock with --via udp".format(key.path))
    target = options.dns_server  # None: this machine's resolver
    resolved = []  # type: List[Tuple[int, tuple]]

    def where() -> Tuple[int, tuple]:  # resolved once, and only if needed
        if not resolved:
            resolved.append(resolve(target, DNS_PORT, options.family or 0))
        return resolved[0]

    def direct() -> bool:  # is the query going straight to the spa server?
        if target is None:
            return False
        return target.strip("[]") == host.strip("[]") or bool(addresses_of(target) & addresses_of(host))

    index = key.index(request)
    if ip is not None:  # names the address: works straight or through any resolver
        token = seal_extended(key.obfuscation_key, key.mac_key, key.key_id, when, index, ip)
    elif not direct():
        raise KnockError("through a resolver the spa server sees the resolver's address, not yours: "
                         "name the address to open with --ip (your public address), or ask the spa "
                         "server directly with --dns-server {}".format(host))
    elif options.unbound:
        token = seal_compact(key.obfuscation_key, key.mac_key, key.key_id, when, index, None)
    else:
        token = seal_compact(key.obfuscation_key, key.mac_key, key.key_id, when, index,
                             source_address(*where()))
    name = dns_name(token, key.zone)
    command = ["nslookup", name] + ([] if target is None else [target])
    if options.print_only:
        _say(" ".join(command) if _windows() else shlex.join(command))
        return 0
    if options.nslookup:
        try:
            result = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, timeout=30, check=False)
        except FileNotFoundError:
            raise KnockError("nslookup is not installed here: leave out --nslookup") from None
        except subprocess.TimeoutExpired:
            raise KnockError("nslookup did not finish within 30 s") from None
        output = result.stdout.decode("utf-8", "replace")
        sys.stdout.write(output if output.endswith("\n") or not output else output + "\n")
        if "timed out" in output or "no servers could be reached" in output:
            raise KnockError("nslookup reached no DNS server: the knock may not have arrived")
        _say("queried {} with nslookup".format(name))
        return 0
    if target is not None:
        family, sockaddr = where()
        how = "at {}".format(sockaddr[0])
    else:
        resolver = system_resolver()
        if resolver is None:  # Windows, or no resolv.conf: let the OS ask its resolver
            ask_system_resolver(name)
            _say("looked up {} through this machine's resolver".format(name))
            return 0
        family, sockaddr = resolve(resolver, DNS_PORT)
        how = "through the resolver {}".format(sockaddr[0])
    rcode = ask_dns(family, sockaddr, name)
    if rcode is None:
        raise KnockError("no answer from {} after {} tries: the knock may not have arrived".format(
            sockaddr[0], DNS_TRIES))
    _say("queried {} {} (answer: {})".format(name, how, RCODES.get(rcode, rcode)))
    return 0


def knock_icmp(key: Key, host: str, options: argparse.Namespace, when: int, ip: Optional[Address],
               request: Request) -> None:
    index = key.index(request)
    if ip is not None:
        bound = ip  # type: Optional[Address]
        version = ip.version
    elif options.unbound:
        bound = None
        version = 6 if (options.family == socket.AF_INET6 or ":" in host) else 4
    else:
        family, sockaddr = resolve(host, 0, options.family or 0)
        bound = source_address(family, sockaddr)
        version = bound.version
    token = seal_compact(key.obfuscation_key, key.mac_key, key.key_id, when, index, bound)
    pattern = token.hex()
    if version == 6 and _macos():
        command = ["ping6", "-c", "2", "-s", "56", "-p", pattern, host]
    elif version == 6:
        command = ["ping", "-6", "-c", "2", "-p", pattern, host]
    else:
        command = ["ping", "-c", "2", "-p", pattern, host]
    _say(" ".join(command))
    if _windows():
        sys.stderr.write("{}: note: Windows ping.exe cannot carry a pattern: run this on Linux or "
                         "macOS, or knock from here with --via dns (or --via udp)\n".format(PROG))


def run(argv: Optional[List[str]] = None, environ: Optional[Dict[str, str]] = None,
        home: Optional[str] = None) -> int:
    options = build_parser().parse_args(argv)
    environ = dict(os.environ) if environ is None else environ
    home = os.path.expanduser("~") if home is None else home
    if options.via != "dns" and (options.dns_server or options.nslookup):
        raise KnockError("--dns-server and --nslookup go with --via dns")
    if options.via != "udp" and options.seconds:
        raise KnockError("--seconds goes with --via udp (tokens ask for the server's grant length)")
    if options.ip is not None and options.unbound:
        raise KnockError("--ip and --unbound exclude each other")
    key = load_key(find_key(options.key, environ, home))
    host = (options.host or key.server).strip()
    if not host:
        raise KnockError("no HOST given and the key file names no server: {} [options] HOST".format(PROG))
    when = int(time.time()) if options.at is None else options.at
    if not 0 <= when <= 0xFFFFFFFF:
        raise KnockError("--at: a token's time must be a Unix time that fits 32 bits, not {}".format(when))
    ip = _address(options.ip)
    requests = _requests(key, options.open)
    if options.via != "udp" and len(requests) > 1:
        raise KnockError("a DNS or ping token names one port; knock several at once with --via udp")
    if options.via == "udp":
        knock_udp(key, host, options, when, ip, requests)
        return 0
    if options.via == "dns":
        return knock_dns(key, host, options, when, ip, requests[0])
    knock_icmp(key, host, options, when, ip, requests[0])
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    try:
        return run(argv)
    except KnockError as problem:
        sys.stderr.write("{}: error: {}\n".format(PROG, problem))
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("{}: interrupted\n".format(PROG))
        return 130
    except Exception as problem:  # never a traceback: one line a person can report
        sys.stderr.write("{}: error: unexpected {}: {}\n".format(PROG, type(problem).__name__, problem))
        return 1


if __name__ == "__main__":
    sys.exit(main())
