"""Keys: the client key file a person carries, and the server's key store.

A client key file (``NAME.spakey``) is flat ``option = value`` lines, a
subset of TOML that a POSIX shell script can read too. The server keeps one
``NAME.toml`` per person in its keys directory: the secret (or only an
Ed25519 public key), optional TOTP and emergency-code secrets, and policy
overrides. Files holding secrets are refused if group or others can read
them, as ssh does, with the command that fixes it.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from spa.errors import ConfigError, KeyFileError

from . import tomlfile
from .compact import MAX_KEY_ID
from .events import Request
from .otp import NAME_PATTERN, TOTP_DIGITS, secret_problem
from .policy import Policy, read_policy
from .sequence import SequenceRule
from .tomlfile import Document

CLIENT_FORMAT = "spa-key-1"
SECRET_SIZE = 32
KEY_SUFFIX = ".toml"


def check_private(path: Path) -> None:
    """Refuse a secret file that group or others can read, saying how to fix it."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"{path} is readable by group or others (mode {mode:04o}); "
            f"secrets must be private: run 'chmod 600 {path}'"
        )


def check_server_private(path: Path) -> None:
    """:func:`check_private` for the server's own secrets (key store, server secret).

    One exception: spa started as a user other than root (a unit with
    ``User=`` and capabilities) cannot own its secrets, since its worker
    runs as that same user and must not be able to change them; root owns
    them then, readable by the group spa runs as (mode 0640).
    """
    info = os.stat(path)
    mode = stat.S_IMODE(info.st_mode)
    if os.geteuid() != 0 and info.st_uid == 0 and info.st_gid == os.getegid() and not mode & 0o037:
        return
    check_private(path)


def write_private(path: Path, text: str) -> None:
    """Write a secret file with mode 0600 from its first byte, atomically.

    The temporary file gets a fresh random name, made with O_EXCL and
    O_NOFOLLOW (mkstemp), so a name planted in the directory (``spa keygen
    --out`` may well write to /tmp) is never written through; the rename
    then replaces whatever ``path`` was, a link included, not what it named.
    """
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def new_secret() -> bytes:
    return secrets.token_bytes(SECRET_SIZE)


def new_signing_key() -> tuple[bytes, bytes]:
    """A fresh Ed25519 key pair as raw (seed, public key) bytes."""
    private = Ed25519PrivateKey.generate()
    return private.private_bytes_raw(), private.public_key().public_bytes_raw()


def valid_name(name: str) -> bool:
    """Key names go into DNS labels: lowercase letters and digits, letter first."""
    return bool(NAME_PATTERN.fullmatch(name))


def _hex(doc: Document, option: str, size: int) -> bytes:
    value = doc.data.get(option)
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != size:
        doc.fail((option,), f"expected {size * 2} hex digits")
    return raw


def _key_id(doc: Document) -> int:
    key_id = doc.data.get("key_id")
    if not isinstance(key_id, int) or isinstance(key_id, bool) or not 1 <= key_id <= MAX_KEY_ID:
        doc.fail(("key_id",), f"expected a whole number 1-{MAX_KEY_ID}")
    return key_id


def _name(doc: Document) -> str:
    name = doc.data.get("name")
    if not isinstance(name, str) or not valid_name(name):
        doc.fail(("name",), "expected 1-12 lowercase letters and digits, starting with a letter "
                            "(a code label must fit one DNS label)")
    return name


def _only_known(doc: Document, known: set[str]) -> None:
    for option in doc.data:
        if option not in known:
            doc.fail((option,), "unknown option")


@dataclass(frozen=True)
class ClientKey:
    """Everything a person's client needs to knock one server."""

    name: str
    key_id: int
    server: str
    obfuscation_key: bytes
    open: tuple[Request, ...]
    secret: bytes | None = None  # symmetric knocks (compact, extended, datagram kind 0)
    signing_key: bytes | None = None  # Ed25519 seed (datagram kind 1 only)
    zone: str = ""
    udp_port: int = 62201
    default_open: Request | None = None
    # The server's [otp] sequence settings: a client that guessed them knocked
    # ports the server never watched (key files made before it hold none: the defaults).
    sequence: SequenceRule = field(default_factory=SequenceRule)

    @property
    def default_request(self) -> Request:
        return self.default_open or self.open[0]

    def request_index(self, request: Request) -> int:
        """The index a compact token uses to name ``request``."""
        try:
            return self.open.index(request)
        except ValueError:
            allowed = ", ".join(map(str, self.open))
            raise KeyFileError(f"this key may open {allowed}, not {request}") from None

    def render(self) -> str:
        lines = [
            f"# spa client key: {self.name} at {self.server}. Keep it private (mode 0600).",
            f'format = "{CLIENT_FORMAT}"',
            f'name = "{self.name}"',
            f"key_id = {self.key_id}",
            f'server = "{self.server}"',
            f'zone = "{self.zone}"',
            f"udp_port = {self.udp_port}",
            "# order matters: a token names the port by its position in this list",
            f'open = "{",".join(map(str, self.open))}"',
            f'default_open = "{self.default_request}"',
            f'obfuscation_key = "{self.obfuscation_key.hex()}"',
            "# one-time port sequences, as this server makes them ([otp] in its spa.toml)",
            f"sequence_length = {self.sequence.length}",
            f'sequence_ports = "{self.sequence.low}-{self.sequence.high}"',
            f"sequence_step = {self.sequence.step_seconds}",
        ]
        if self.secret is not None:
            lines.append(f'secret = "{self.secret.hex()}"')
        if self.signing_key is not None:
            lines.append(f'signing_key = "{self.signing_key.hex()}"')
        return "\n".join(lines) + "\n"


def _request_list(doc: Document, option: str) -> tuple[Request, ...]:
    text = doc.data.get(option)
    if not isinstance(text, str) or not text.strip():
        doc.fail((option,), 'expected a list such as "tcp/22,tcp/3389"')
    try:
        return tuple(Request.parse(part) for part in text.split(","))
    except ValueError as problem:
        doc.fail((option,), str(problem))


def load_client_key(path: Path) -> ClientKey:
    """Read a client key file, refusing it if others can read it."""
    if not path.is_file():
        raise KeyFileError(f"{path}: no such key file")
    check_private(path)
    doc = tomlfile.load(path)
    _only_known(doc, {"format", "name", "key_id", "server", "zone", "udp_port", "open",
                      "default_open", "obfuscation_key", "secret", "signing_key",
                      "sequence_length", "sequence_ports", "sequence_step"})
    if doc.data.get("format") != CLIENT_FORMAT:
        doc.fail(("format",), f'expected "{CLIENT_FORMAT}" (is this an spa client key file?)')
    for option in ("server", "open", "obfuscation_key"):
        if option not in doc.data:
            doc.fail((option,), "missing")
    if "secret" not in doc.data and "signing_key" not in doc.data:
        doc.fail(("secret",), "missing (or signing_key for an Ed25519 key)")
    open_ = _request_list(doc, "open")
    default = _request_list(doc, "default_open")[0] if "default_open" in doc.data else None
    if default is not None and default not in open_:
        doc.fail(("default_open",), "must be one of the ports in open")
    port = doc.data.get("udp_port", 62201)
    if not isinstance(port, int) or not 1 <= port <= 65535:
        doc.fail(("udp_port",), "expected a port 1-65535")
    return ClientKey(
        name=_name(doc),
        key_id=_key_id(doc),
        server=str(doc.data["server"]),
        obfuscation_key=_hex(doc, "obfuscation_key", SECRET_SIZE),
        open=open_,
        secret=_hex(doc, "secret", SECRET_SIZE) if "secret" in doc.data else None,
        signing_key=_hex(doc, "signing_key", 32) if "signing_key" in doc.data else None,
        zone=str(doc.data.get("zone", "")).strip(".").lower(),
        udp_port=port,
        default_open=default,
        sequence=_sequence_rule(doc),
    )


def _sequence_rule(doc: Document) -> SequenceRule:
    """The server's sequence settings from a client key file (the defaults where absent)."""
    default = SequenceRule()
    length = doc.data.get("sequence_length", default.length)
    step = doc.data.get("sequence_step", default.step_seconds)
    for option, value in (("sequence_length", length), ("sequence_step", step)):
        if not isinstance(value, int) or isinstance(value, bool):
            doc.fail((option,), "expected a whole number")
    ports = doc.data.get("sequence_ports", f"{default.low}-{default.high}")
    match = re.fullmatch(r"\s*([0-9]{1,5})\s*-\s*([0-9]{1,5})\s*", ports) if isinstance(ports, str) else None
    if match is None:
        doc.fail(("sequence_ports",), 'expected a range such as "20000-59999"')
    try:
        return SequenceRule(length=length, low=int(match.group(1)), high=int(match.group(2)), step_seconds=step)
    except ValueError as problem:
        doc.fail(("sequence_ports",), str(problem))


@dataclass(frozen=True)
class KeyRecord:
    """One person's entry in the server's key store."""

    name: str
    key_id: int
    policy: Policy
    secret: bytes | None = None
    public_key: bytes | None = None  # Ed25519, raw 32 bytes
    totp_secret: str | None = None
    totp_digits: int = 6
    emergency_secret: str | None = None
    emergency_count: int = 0
    path: str = field(default="", compare=False)

    def render(self, policy_overrides: dict[str, Any]) -> str:
        """The key store file for this record (policy given as TOML values)."""
        lines = [
            f"# spa key store entry for {self.name}. Delete this file (spa revoke) to revoke it.",
            f'name = "{self.name}"',
            f"key_id = {self.key_id}",
        ]
        if self.secret is not None:
            lines.append(f'secret = "{self.secret.hex()}"')
        if self.public_key is not None:
            lines.append(f'public_key = "{self.public_key.hex()}"')
        if self.totp_secret:
            lines += [f'totp_secret = "{self.totp_secret}"', f"totp_digits = {self.totp_digits}"]
        if self.emergency_secret:
            lines += [f'emergency_secret = "{self.emergency_secret}"', f"emergency_count = {self.emergency_count}"]
        if policy_overrides:
            lines += ["", "[policy]  # overrides the [policy] defaults of spa.toml for this key"]
            lines += [f"{option} = {_toml_value(value)}" for option, value in policy_overrides.items()]
        return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def load_record(path: Path, defaults: Policy | None, protected: tuple[Request, ...] = (),
                single_use: bool = True) -> KeyRecord:
    """Read one key store entry; its [policy] table overrides ``defaults``.

    With ``protected`` given, every port the key may open must be among them;
    ``single_use`` False (the firewall cannot do it) refuses a single-use policy.
    """
    check_server_private(path)
    doc = tomlfile.load(path)
    _only_known(doc, {"name", "key_id", "secret", "public_key", "totp_secret", "totp_digits",
                      "emergency_secret", "emergency_count", "policy"})
    name = _name(doc)
    if path.name != name + KEY_SUFFIX:
        doc.fail(("name",), f"does not match the file name (expected {path.stem!r})")
    if "secret" not in doc.data and "public_key" not in doc.data:
        doc.fail(("secret",), "missing (or public_key for an Ed25519 key)")
    otp_secrets: dict[str, str] = {}
    for option in ("totp_secret", "emergency_secret"):
        if option in doc.data:
            value = doc.data[option]
            problem = secret_problem(value) if isinstance(value, str) else "expected a base32 secret (a string)"
            if problem:
                doc.fail((option,), problem)
            otp_secrets[option] = value.upper()
    digits = doc.data.get("totp_digits", 6)
    if digits not in TOTP_DIGITS or isinstance(digits, bool):
        doc.fail(("totp_digits",), "expected 6 or 8")
    count = doc.data.get("emergency_count", 0)
    if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= 100:
        doc.fail(("emergency_count",), "expected 0-100")
    policy = read_policy(doc, ("policy",), defaults)
    if policy.single_use and not single_use:
        doc.fail(("policy", "single_use"), "this server's firewall backend cannot do single-use grants (use nftables)")
    for request in policy.open:
        if protected and request not in protected:
            doc.fail(("policy", "open"), f"{request} is not in the config's firewall.protect")
    return KeyRecord(
        name=name,
        key_id=_key_id(doc),
        policy=policy,
        secret=_hex(doc, "secret", SECRET_SIZE) if "secret" in doc.data else None,
        public_key=_hex(doc, "public_key", 32) if "public_key" in doc.data else None,
        totp_secret=otp_secrets.get("totp_secret"),
        totp_digits=digits,
        emergency_secret=otp_secrets.get("emergency_secret"),
        emergency_count=count,
        path=str(path),
    )


def load_store(directory: Path, defaults: Policy | None, protected: tuple[Request, ...] = (),
               single_use: bool = True) -> list[KeyRecord]:
    """Load every ``*.toml`` entry of a keys directory; ids and names must be unique."""
    if not directory.is_dir():
        raise ConfigError(str(directory), None, None, "keys directory does not exist")
    records: list[KeyRecord] = []
    seen_ids: dict[int, str] = {}
    for path in sorted(directory.glob("*" + KEY_SUFFIX)):
        record = load_record(path, defaults, protected, single_use)
        if record.key_id in seen_ids:
            raise ConfigError(str(path), None, "key_id", f"{record.key_id} is also used by {seen_ids[record.key_id]}")
        seen_ids[record.key_id] = record.path
        records.append(record)
    return records
