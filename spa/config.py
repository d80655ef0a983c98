"""The server configuration: one TOML file parsed into typed dataclasses.

Every mistake is reported with file, line and option, and unknown options
are errors (a typo must not silently fall back to a default). Paths in the
file are relative to the file's own directory.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from spa.carriers.dns import MAX_TTL, Zone
from spa.core import pathtrust, tomlfile
from spa.core.events import Carrier, IPAddress, Request
from spa.core.gate import GateSettings
from spa.core.keyring import Keyring
from spa.core.keys import KEY_SUFFIX, check_server_private, load_store
from spa.core.policy import POLICY_OPTIONS, Policy, read_policy
from spa.core.sequence import SequenceRule, StaticSequence, knock_ports
from spa.core.tomlfile import Document
from spa.errors import ConfigError
from spa.firewall.settings import (
    BACKENDS,
    STEALTH_MODES,
    FirewallSettings,
    FirewallSettingsError,
    single_use_refusal,
    stealth_refusal,
)
from spa.intake.bpf import PortRange, Wanted, compile_filter

T = TypeVar("T")

SECRET_SIZE = 32
_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


@dataclass(frozen=True)
class IcmpConfig:
    """``[carriers.icmp]``: knocks in ``ping -p`` patterns."""

    silence_replies: bool = False  # set the kernel's echo_ignore_all sysctls while spa runs


@dataclass(frozen=True)
class DnsConfig:
    """``[carriers.dns]``: knocks as one label under ``zone``."""

    zone: str
    mode: str = "serve"  # "serve": spa answers on port 53; "sniff": another server does, spa listens
    listen: tuple[IPAddress, ...] = (ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address("::"))
    port: int = 53
    nameservers: tuple[str, ...] = ()  # NS targets at the apex (default ns1.ZONE)
    addresses: tuple[IPAddress, ...] = ()  # addresses of in-zone NS targets (the glue)
    ttl: int = 1
    # What the worker answers from, built at load: whatever the zone refuses is then
    # a config error with file, line and option, never a worker that cannot start.
    served: Zone | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class UdpConfig:
    """``[carriers.udp]``: SPA datagrams."""

    port: int = 62201


@dataclass(frozen=True)
class SequenceConfig:
    """``[carriers.sequence]``: port sequences from a one-time password."""

    timeout: float = 10.0  # seconds from a sequence's first port to its last


@dataclass(frozen=True)
class Config:
    path: Path
    keys_dir: Path
    state_dir: Path
    secret_file: Path
    interfaces: tuple[str, ...]  # empty: every interface
    user: str  # the unprivileged user that parses packets
    policy: Policy
    gate: GateSettings
    firewall: FirewallSettings
    icmp: IcmpConfig | None  # None: carrier off
    dns: DnsConfig | None
    udp: UdpConfig | None
    sequence: SequenceConfig | None
    statics: tuple[StaticSequence, ...]  # [sequences.NAME]: fixed sequences, on whenever defined

    @property
    def carriers(self) -> tuple[str, ...]:
        """Names of the carriers that are on, in the order of CARRIERS."""
        on = {"icmp": self.icmp, "dns": self.dns, "udp": self.udp, "sequence": self.sequence or self.statics}
        return tuple(name for name in CARRIERS if on[name])


CARRIERS = ("icmp", "dns", "udp", "sequence")
SECTIONS = ("server", "policy", "limits", "otp", "firewall", "carriers", "sequences")
SERVER_OPTIONS = ("keys_dir", "state_dir", "secret_file", "interfaces", "user", "time_window", "repeat_window")
CARRIER_OPTIONS = {
    "icmp": ("enabled", "silence_replies"),
    "dns": ("enabled", "zone", "mode", "listen", "port", "nameservers", "addresses", "ttl"),
    "udp": ("enabled", "port"),
    "sequence": ("enabled", "timeout"),
}
STATIC_OPTIONS = ("ports", "timeout")
_ZONE = re.compile(r"^(?=.{1,200}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
LIMIT_OPTIONS = (
    "source_rate", "source_burst", "key_rate", "key_burst", "otp_failures_per_source",
    "otp_failures_per_key", "otp_failures_per_key_per_day", "failure_period", "lockout_seconds", "tracked_sources",
)
OTP_OPTIONS = ("totp_steps", "sequence_length", "sequence_ports", "sequence_step")


class _Reader:
    """Typed access to one table of a Document, failing with file:line: option."""

    def __init__(self, doc: Document, table: tuple[str, ...], known: tuple[str, ...] | None) -> None:
        self.doc = doc
        self.table = table
        node: Any = doc.data
        for part in table:
            node = node.get(part, {})
        if not isinstance(node, dict):
            doc.fail(table, "expected a table")
        self.node: dict[str, Any] = node
        if known is not None:
            for option in node:
                if option not in known:
                    doc.fail((*table, option), f"unknown option (known: {', '.join(known)})")

    def fail(self, option: str, message: str) -> NoReturn:
        self.doc.fail((*self.table, option), message)

    def number(self, option: str, default: T, low: float, high: float, kind: type = int) -> T:
        value = self.node.get(option, default)
        ok_types = (int, float) if kind is float else (int,)
        if isinstance(value, bool) or not isinstance(value, ok_types) or not low <= value <= high:
            self.fail(option, f"expected a {'number' if kind is float else 'whole number'} from {low:g} to {high:g}")
        return kind(value)  # type: ignore[no-any-return]

    def text(self, option: str, default: str) -> str:
        value: object = self.node.get(option, default)
        if not isinstance(value, str):
            self.fail(option, "expected a string")
        return value

    def flag(self, option: str, default: bool) -> bool:
        value: object = self.node.get(option, default)
        if not isinstance(value, bool):
            self.fail(option, "expected true or false")
        return value

    def convert(self, option: str, convert: Callable[[], T]) -> T:
        try:
            return convert()
        except ValueError as problem:
            self.fail(option, str(problem))
            raise  # unreachable: fail raises


def load(path: Path) -> Config:
    """Parse and validate a server config file (not yet the keys: see load_keyring)."""
    doc = tomlfile.load(path)
    for section in doc.data:
        if section not in SECTIONS:
            doc.fail((section,), f"unknown section (known: {', '.join(SECTIONS)})")
    base = path.resolve().parent

    server = _Reader(doc, ("server",), SERVER_OPTIONS)
    time_window = server.number("time_window", 60, 1, 3600)
    repeat_window = server.number("repeat_window", 30, 0, 3600)
    if repeat_window > time_window:
        server.fail("repeat_window", "must not be longer than time_window")

    interfaces = server.node.get("interfaces", [])
    if not isinstance(interfaces, list) or not all(isinstance(i, str) and i for i in interfaces):
        server.fail("interfaces", 'expected a list of interface names such as ["eth0"] (empty: all)')
    interfaces = tuple(interfaces)

    limits = _Reader(doc, ("limits",), LIMIT_OPTIONS)
    otp = _Reader(doc, ("otp",), OTP_OPTIONS)
    ports_text = otp.text("sequence_ports", "20000-59999")
    match = _RANGE.match(ports_text)
    if not match:
        otp.fail("sequence_ports", 'expected a range such as "20000-59999"')
    low, high = int(match.group(1)), int(match.group(2))
    rule = otp.convert(
        "sequence_ports",
        lambda: SequenceRule(
            length=otp.number("sequence_length", 3, 2, 8),
            low=low,
            high=high,
            step_seconds=otp.number("sequence_step", 30, 5, 3600),
        ),
    )
    gate = GateSettings(
        time_window=time_window,
        repeat_window=repeat_window,
        totp_steps=otp.number("totp_steps", 1, 0, 10),
        sequence=rule,
        source_rate=limits.number("source_rate", 5.0, 0.01, 1e6, float),
        source_burst=limits.number("source_burst", 20, 1, 1e6),
        key_rate=limits.number("key_rate", 0.5, 0.001, 1e6, float),
        key_burst=limits.number("key_burst", 10, 1, 1e6),
        otp_failures_per_source=limits.number("otp_failures_per_source", 5, 1, 1000),
        otp_failures_per_key=limits.number("otp_failures_per_key", 20, 1, 10000),
        otp_failures_per_key_per_day=limits.number("otp_failures_per_key_per_day", 10.0, 0.01, 10000, float),
        failure_period=limits.number("failure_period", 600, 1, 86400),
        lockout_seconds=limits.number("lockout_seconds", 300, 1, 86400),
        tracked_sources=limits.number("tracked_sources", 65536, 16, 10_000_000),
    )

    firewall = _read_firewall(doc)
    protect = firewall.protect

    policy = read_policy(doc, ("policy",), None)
    if policy.single_use and not firewall.can_single_use:
        doc.fail(("policy", "single_use"), single_use_refusal(firewall.backend))
    for request in policy.open:
        if request not in protect:
            doc.fail(("policy", "open"), f"{request} is not in firewall.protect: a grant would open nothing")

    _Reader(doc, ("carriers",), CARRIERS)
    tables = {name: _Reader(doc, ("carriers", name), CARRIER_OPTIONS[name]) for name in CARRIERS}
    on = {name: table.flag("enabled", name in doc.data.get("carriers", {})) for name, table in tables.items()}
    icmp = IcmpConfig(tables["icmp"].flag("silence_replies", False)) if on["icmp"] else None
    dns = _read_dns(tables["dns"]) if on["dns"] else None
    udp = UdpConfig(tables["udp"].number("port", 62201, 1, 65535)) if on["udp"] else None
    sequence = SequenceConfig(tables["sequence"].number("timeout", 10.0, 1, 600, float)) if on["sequence"] else None
    statics = _read_statics(doc, policy, firewall)

    quiet = list(knock_ports(statics, rule, otp=sequence is not None))
    if udp is not None:
        quiet.append(("udp", udp.port, udp.port))
    try:
        firewall = FirewallSettings(**{**{f.name: getattr(firewall, f.name) for f in fields(firewall)},
                                       "quiet": tuple(sorted(set(quiet)))})
    except FirewallSettingsError as problem:
        doc.fail(("carriers",), f"a knock port collides with firewall.protect: {problem}")

    loaded = Config(
        path=path,
        keys_dir=base / server.text("keys_dir", "keys"),
        state_dir=base / server.text("state_dir", "state"),
        secret_file=base / server.text("secret_file", "server.secret"),
        interfaces=interfaces,
        user=_user(server),
        policy=policy,
        gate=gate,
        firewall=firewall,
        icmp=icmp,
        dns=dns,
        udp=udp,
        sequence=sequence,
        statics=statics,
    )
    _check_capture(doc, loaded)
    return loaded


def wanted(config: Config) -> Wanted:
    """What the capture must see: echo requests and the knock ports (the one definition)."""
    udp = [PortRange(low, high) for proto, low, high in config.firewall.quiet if proto == "udp"]
    tcp = [PortRange(low, high) for proto, low, high in config.firewall.quiet if proto == "tcp"]
    if config.dns is not None and config.dns.mode == "sniff":
        udp.append(PortRange(config.dns.port, config.dns.port))
    return Wanted(icmp_echo=config.icmp is not None, udp=tuple(udp), tcp_syn=tuple(tcp))


def _check_capture(doc: Document, loaded: Config) -> None:
    """The capture's packet filter for these carriers and knock ports must fit in the
    kernel's limit (4096 instructions), or ``spa serve`` could not open its capture."""
    try:
        compile_filter(wanted(loaded))
    except ValueError as problem:
        # The last fixed sequence is the one that tipped it over (else: the carriers' own ports).
        doc.fail(("sequences", loaded.statics[-1].name) if loaded.statics else ("carriers",), str(problem))


def _user(server: _Reader) -> str:
    user = server.text("user", "nobody")
    if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", user):
        server.fail("user", "expected a user name such as nobody or spa")
    return user


def _addresses(table: _Reader, option: str, default: tuple[IPAddress, ...]) -> tuple[IPAddress, ...]:
    value = table.node.get(option)
    if value is None:
        return default
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        table.fail(option, 'expected a list of addresses such as ["192.0.2.1"]')
    return tuple(table.convert(option, lambda: [ipaddress.ip_address(item) for item in value]))


def _read_dns(table: _Reader) -> DnsConfig:
    if "zone" not in table.node:
        table.fail("zone", "missing: the zone delegated to this server, e.g. knock.example.com")
    zone = table.text("zone", "").lower().rstrip(".")
    if not _ZONE.fullmatch(zone):
        table.fail("zone", f"{zone!r} is not a domain name such as knock.example.com")
    mode = table.text("mode", "serve")
    if mode not in ("serve", "sniff"):
        table.fail("mode", 'expected "serve" (answer on port 53) or "sniff" (another server answers)')
    nameservers = table.node.get("nameservers", [])
    if not isinstance(nameservers, list) or not all(
        isinstance(n, str) and _ZONE.fullmatch(n.lower().rstrip(".")) for n in nameservers
    ):
        table.fail("nameservers", 'expected a list of host names such as ["ns1.knock.example.com"]')
    servers = tuple(n.lower().rstrip(".") for n in nameservers)
    addresses = _addresses(table, "addresses", ())
    ttl = table.number("ttl", 1, 0, MAX_TTL)
    return DnsConfig(
        zone=zone,
        mode=mode,
        listen=_addresses(table, "listen", DnsConfig.listen),
        port=table.number("port", 53, 1, 65535),
        nameservers=servers,
        addresses=addresses,
        ttl=ttl,
        served=_zone(table, zone, servers, addresses, ttl),
    )


def _zone(table: _Reader, name: str, nameservers: tuple[str, ...], addresses: tuple[IPAddress, ...],
          ttl: int) -> Zone:
    """The zone exactly as the worker will serve it; its own checks are the one rule.

    Built an option at a time, so an error names the option that broke it.
    """
    stages: tuple[tuple[str, dict[str, Any]], ...] = (
        ("zone", {}),
        ("nameservers", {"nameservers": nameservers}),
        ("addresses", {"nameservers": nameservers, "addresses": addresses}),
        ("ttl", {"nameservers": nameservers, "addresses": addresses, "ttl": ttl}),
    )
    for option, given in stages:
        built = table.convert(option, lambda given=given: Zone.build(name, **given))  # type: ignore[misc]
    return built


def _read_statics(doc: Document, defaults: Policy, firewall: FirewallSettings) -> tuple[StaticSequence, ...]:
    """Every ``[sequences.NAME]`` table: ``ports`` and ``timeout`` plus policy options."""
    protect = firewall.protect
    node = doc.data.get("sequences", {})
    if not isinstance(node, dict):
        doc.fail(("sequences",), "expected tables such as [sequences.ssh]")
    statics = []
    for name in node:
        where = ("sequences", name)
        table = _Reader(doc, where, STATIC_OPTIONS + POLICY_OPTIONS)
        if not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", name):
            doc.fail(where, "sequence names are lowercase letters, digits, - and _")
        ports = table.node.get("ports")
        if not isinstance(ports, list) or not all(isinstance(p, str) for p in ports):
            table.fail("ports", 'expected a list such as ["tcp/7000", "udp/8000", "tcp/9000"]')
        steps = tuple(table.convert("ports", lambda: [Request.parse(p) for p in ports]))
        policy = read_policy(doc, where, defaults, ignore=STATIC_OPTIONS)
        policy = Policy(**{**{f.name: getattr(policy, f.name) for f in fields(policy)},
                           "carriers": frozenset({Carrier.SEQUENCE})})
        for request in policy.open:
            if request not in protect:
                doc.fail((*where, "open"), f"{request} is not in firewall.protect: a grant would open nothing")
        if policy.single_use and not firewall.can_single_use:
            doc.fail((*where, "single_use"), single_use_refusal(firewall.backend))
        timeout = table.number("timeout", 5.0, 0.1, 3600, float)
        statics.append(table.convert("ports", lambda: StaticSequence(name, steps, policy, timeout)))
    return tuple(statics)


def _read_firewall(doc: Document) -> FirewallSettings:
    """The ``[firewall]`` table onto FirewallSettings, field by field."""
    defaults = FirewallSettings()
    # quiet (the knock ports) is derived from the carriers, not configured.
    table = _Reader(doc, ("firewall",), tuple(f.name for f in fields(FirewallSettings) if f.name != "quiet"))
    values: dict[str, Any] = {}
    backend = table.text("backend", defaults.backend)
    if backend not in BACKENDS:
        table.fail("backend", f"expected one of {', '.join(BACKENDS)}")
    # Checked here, not only in FirewallSettings, so the error names the option's own line.
    stealth = table.node.get("stealth", defaults.stealth)
    if stealth not in STEALTH_MODES:
        table.fail("stealth", stealth_refusal(stealth))
    if "protect" not in table.node:
        table.fail("protect", 'missing: which ports should the guard hide? e.g. ["tcp/22"]')
    for option, value in table.node.items():
        default = getattr(defaults, option)
        if option in ("protect", "single_use"):
            if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
                table.fail(option, 'expected a list such as ["tcp/22"]')
            listed: list[str] = value
            values[option] = table.convert(option, lambda: tuple(Request.parse(p) for p in listed))
        elif option in ("start_command", "stop_command"):
            if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
                table.fail(option, 'expected an argument list such as ["/usr/local/bin/open", "%IP%"]')
            values[option] = tuple(value)
        elif isinstance(default, bool):
            values[option] = table.flag(option, default)
        elif isinstance(default, int):
            values[option] = table.number(option, default, -(2**32), 2**32)
        else:
            values[option] = table.text(option, default)
    try:
        return FirewallSettings(**values)
    except FirewallSettingsError as problem:
        doc.fail(("firewall",), str(problem))


def read_server_secret(path: Path) -> bytes:
    """The server-wide obfuscation key: 64 hex digits in a private file."""
    if not path.is_file():
        raise ConfigError(str(path), None, None, "server secret file missing (spa init makes one)")
    check_server_private(path)
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if len(secret) != SECRET_SIZE:
        raise ConfigError(str(path), 1, None, f"expected {SECRET_SIZE * 2} hex digits")
    return secret


def check_ownership(config: Config) -> None:
    """Refuse a config whose files anyone but root could change (pathtrust.py).

    The config, the server secret, the keys directory and each key in it,
    and the state directory: the way to each, and each itself. The state
    directory may still belong to the worker's user, as it did before it
    had a part of root's own (spa serve takes it back).
    """
    owners = pathtrust.trusted_owners()
    if os.geteuid() != 0:
        # Not root: the worker runs as this very user (there is no root to
        # drop), so what this user may change, a compromised worker may change
        # (an outside review rewrote spa.toml and server.secret that way).
        # Only root may own the config, the secret and the keys then
        # (readable by spa's group: keys.check_server_private).
        owners = frozenset({0})
    for path in (config.path, config.secret_file, config.keys_dir):
        pathtrust.check(path, owners)
    if config.keys_dir.is_dir():
        for key in sorted(config.keys_dir.glob("*" + KEY_SUFFIX)):
            pathtrust.check(key, owners)
    try:
        legacy = frozenset({pwd.getpwnam(config.user).pw_uid})
    except KeyError:
        legacy = frozenset()
    pathtrust.check(config.state_dir, owners, owners | legacy | {os.geteuid()})


def load_keyring(config: Config) -> Keyring:
    """Load the key store and the server secret into a Keyring, once
    :func:`check_ownership` passes: the one place where spa serve (at start
    and at each reload) and spa check find out whether to trust them."""
    check_ownership(config)
    records = load_store(config.keys_dir, config.policy, config.firewall.protect, config.firewall.can_single_use)
    return Keyring(read_server_secret(config.secret_file), records, config.statics)
