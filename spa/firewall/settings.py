"""Everything a firewall backend needs to know, as one immutable value.

The ``[firewall]`` section of the configuration file maps one-to-one onto
:class:`FirewallSettings`; the defaults are what a fresh install should use.
Validation happens here, once, so backends can trust every field (names are
safe to place in nft or iptables arguments, priorities are ordered, and so on).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from spa.core.events import Request
from spa.errors import SpaError

BACKENDS = ("nftables", "iptables", "command", "dry-run")
SINGLE_USE_BACKENDS = ("nftables", "dry-run")  # the others refuse every single-use grant
# How the guard answers a packet it refuses: "closed" as the kernel answers an
# unused port (TCP RST, ICMP port unreachable), "drop" not at all.
STEALTH_MODES = ("closed", "drop")

# nft identifiers and ipset/iptables chain names: keep them to a boring,
# unquotable-safe alphabet so that no name can ever break out of a command.
NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,27}$")

PLACEHOLDERS = ("%IP%", "%PORT%", "%PROTO%", "%SECONDS%", "%KEY%")


class FirewallSettingsError(SpaError):
    """A firewall setting that cannot work (bad name, priorities out of order...)."""


@dataclass(frozen=True)
class FirewallSettings:
    """How spa closes the protected ports and opens grants.

    Fields (the ``[firewall]`` configuration section uses the same names):

    ``backend``
        ``"nftables"`` (default; in-process libnftables), ``"iptables"``
        (iptables/ip6tables + ipset, for hosts without nft userspace),
        ``"command"`` (knockd-style start/stop commands) or ``"dry-run"``
        (log only, needs no privilege).
    ``protect``
        The ports the guard drops for everyone without a grant, e.g.
        ``(Request("tcp", 22),)``. Grants for other ports are refused.
    ``family``
        nftables family of both tables; ``"inet"`` covers IPv4 and IPv6.
    ``guard_table`` / ``grant_table``
        nftables table names (also the prefix of iptables chains and ipset
        sets). The guard is permanent; the grant table is owned by the daemon.
    ``guard_priority`` / ``grant_priority``
        Input-hook priorities. The grant chain must run first (lower number)
        so its mark is already on the packet when the guard looks for it.
    ``mark``
        Packet-mark bits the grant chain sets and the guard accepts. Reserve
        them for spa: any other rule setting these bits opens the guard.
    ``owner``
        Create the grant table with ``flags owner`` so it vanishes with the
        daemon's netlink socket (a crashed daemon closes every grant at once).
    ``single_use``
        Requests whose grants always let exactly one new connection through
        (a Grant can also ask for this itself with ``single_use=True``).
    ``quiet``
        Knock ports, as ``(proto, low, high)`` ranges: refused for everyone,
        always (as ``stealth`` says), while spa still hears the packets (it
        reads them before netfilter). Not a config option: the server
        derives it from its carriers (UDP SPA port, sequence ports).
    ``stealth``
        How the guard refuses a packet to a protected or knock port:
        ``"closed"`` (default) answers as the kernel answers a port nobody
        uses (TCP RST, ICMP/ICMPv6 port unreachable), so a scan cannot tell
        spa's ports from unused ones on a host whose closed ports answer;
        ``"drop"`` answers nothing, for hosts whose own input policy drops
        by default (then every closed port looks ``filtered``).
    ``start_command`` / ``stop_command``
        For the command backend: argv lists (no shell) with ``%IP%``,
        ``%PORT%``, ``%PROTO%``, ``%SECONDS%`` and ``%KEY%`` substituted.
        ``stop_command`` runs ``seconds`` after the start, from a timer in
        spa; a killed spa cannot run it, so prefer targets that expire alone.
    ``ipset_binary`` / ``iptables_binary`` / ``ip6tables_binary``
        Programs for the iptables backend (looked up on PATH unless absolute).
    """

    backend: str = "nftables"
    protect: tuple[Request, ...] = (Request("tcp", 22),)
    family: str = "inet"
    guard_table: str = "spa_guard"
    grant_table: str = "spa_grant"
    guard_priority: int = 0
    grant_priority: int = -10
    mark: int = 0x5350_0000
    owner: bool = True
    single_use: tuple[Request, ...] = ()
    quiet: tuple[tuple[str, int, int], ...] = ()
    stealth: str = "closed"
    start_command: tuple[str, ...] = ()
    stop_command: tuple[str, ...] = ()
    ipset_binary: str = "ipset"
    iptables_binary: str = "iptables"
    ip6tables_binary: str = "ip6tables"

    def __post_init__(self) -> None:
        # Accept lists from a config parser but store tuples (frozen means frozen).
        for name in ("protect", "single_use", "quiet", "start_command", "stop_command"):
            value = getattr(self, name)
            if not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        self.validate()

    def validate(self) -> None:
        """Raise :class:`FirewallSettingsError` for settings that cannot work."""
        if self.backend not in BACKENDS:
            raise FirewallSettingsError(
                f"firewall backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}"
            )
        if self.stealth not in STEALTH_MODES:
            raise FirewallSettingsError(stealth_refusal(self.stealth))
        if self.family not in ("inet",):
            # ip/ip6 tables would need two guards; inet is in every kernel spa supports.
            raise FirewallSettingsError(f"firewall family must be inet, not {self.family!r}")
        for label, name in (("guard_table", self.guard_table), ("grant_table", self.grant_table)):
            if not NAME_PATTERN.fullmatch(name):
                raise FirewallSettingsError(
                    f"{label} {name!r}: use letters, digits and _ (at most 28, starting with a letter)"
                )
        if self.guard_table == self.grant_table:
            raise FirewallSettingsError("guard_table and grant_table must differ")
        if self.grant_priority >= self.guard_priority:
            raise FirewallSettingsError(
                "grant_priority must be lower than guard_priority: the grant chain "
                "marks packets that the guard chain then accepts"
            )
        if not -400 < self.grant_priority < 300 or not -400 < self.guard_priority < 300:
            # Outside this range we would run before conntrack/defrag or after NAT.
            raise FirewallSettingsError("firewall priorities must lie between -399 and 299")
        if not 0 < self.mark <= 0xFFFF_FFFF:
            raise FirewallSettingsError("firewall mark must be a nonzero 32-bit value")
        for request in self.protect + self.single_use:
            if not isinstance(request, Request):
                raise FirewallSettingsError(f"not a proto/port request: {request!r}")
        if not self.protect:
            raise FirewallSettingsError("firewall protect lists no ports: there is nothing to guard")
        unguarded = [str(r) for r in self.single_use if r not in self.protect]
        if unguarded:
            raise FirewallSettingsError(
                f"single_use names ports that are not protected: {', '.join(unguarded)}"
            )
        for entry in self.quiet:
            if (
                not isinstance(entry, tuple) or len(entry) != 3 or entry[0] not in ("tcp", "udp")
                or not 1 <= entry[1] <= entry[2] <= 65535
            ):
                raise FirewallSettingsError(f"quiet port range must be (tcp|udp, low, high), not {entry!r}")
        clash = [str(r) for r in self.protect if any(p == r.proto and lo <= r.port <= hi for p, lo, hi in self.quiet)]
        if clash:
            raise FirewallSettingsError(
                f"{', '.join(clash)} is both protected and a knock port: a knock port can never be opened"
            )
        if self.single_use and self.backend not in SINGLE_USE_BACKENDS:
            raise FirewallSettingsError(single_use_refusal(self.backend))
        if self.backend == "command":
            if not self.start_command:
                raise FirewallSettingsError("the command backend needs start_command")
        for command in (self.start_command, self.stop_command):
            if any(not isinstance(part, str) for part in command):
                raise FirewallSettingsError("commands are lists of strings (argv, no shell)")

    @property
    def can_single_use(self) -> bool:
        return self.backend in SINGLE_USE_BACKENDS

    def is_protected(self, request: Request) -> bool:
        return request in self.protect

    def wants_single_use(self, request: Request, asked: bool) -> bool:
        """True if a grant for ``request`` must admit only one new connection."""
        return asked or request in self.single_use


def single_use_refusal(backend: str) -> str:
    """Why single-use grants cannot be asked of ``backend`` (the loader says it at load, not at each grant)."""
    return f"the {backend} backend cannot do single-use grants (use nftables)"


def stealth_refusal(value: object) -> str:
    """Why ``value`` is no stealth mode (the config loader names file, line and option with it)."""
    return f"stealth must be one of {', '.join(map(repr, STEALTH_MODES))}, not {value!r}"
