"""Backend for hosts without nftables userspace: iptables/ip6tables + ipset.

Grants are ipset ``hash:ip,port`` members with a ``timeout``, so the kernel
expires them even if spa dies; the guard is a chain of our own jumped to from
INPUT. Unlike nftables there is no owned table, so a killed spa leaves grants
open until their timeout (never longer). Single-use grants are not supported:
ipset cannot delete a member from the packet path, and faking it in userspace
would not be exact; asking for them is an error at install and at grant time.

Every program runs from an argument list (no shell); addresses and ports come
from validated values, set and chain names from FirewallSettings.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import subprocess
from collections.abc import Sequence

from spa.core.events import Grant, IPAddress, Request

from .base import FirewallError, LiveGrant, check_grant, host
from .nft_render import stealth_contrast, who
from .settings import FirewallSettings

log = logging.getLogger(__name__)

# Bounded loops: never spin on a rule that will not go away.
MAX_STALE_JUMPS = 32
SET_TIMEOUT = 3600  # default member timeout; every add states its own
SAVE_LINE = re.compile(
    r'^add (?P<set>\S+) (?P<addr>[0-9A-Fa-f:.]+),(?P<proto>tcp|udp):(?P<port>\d+)'
    r'(?: timeout (?P<timeout>\d+))?(?: comment "(?P<comment>[^"]*)")?'
)


class IptablesBackend:
    """The guard as iptables chains, grants as timed ipset members."""

    def __init__(self, settings: FirewallSettings) -> None:
        self.settings = settings
        self.chain = settings.guard_table
        self.sets = {4: f"{settings.grant_table}4", 6: f"{settings.grant_table}6"}
        self.tools = {4: settings.iptables_binary, 6: settings.ip6tables_binary}
        # ``-S`` lines of our chain per family right after install (damage() compares).
        self._installed: dict[int, list[str]] | None = None

    # -- install / uninstall -------------------------------------------------

    def install(self) -> None:
        """Create sets and the guard chain; clear stale rules from older runs.
        Warns if ``stealth`` would stand out against INPUT's own policy."""
        self._install()
        warning = stealth_contrast(self.settings, self._dropping_inputs())
        if warning:
            log.warning("%s", warning)

    def _dropping_inputs(self) -> list[str]:
        """Which of iptables/ip6tables INPUT has policy DROP (``-P INPUT DROP``)."""
        dropping = []
        for version in (4, 6):
            result = self._call([self.tools[version], "-w", "-S", "INPUT"])
            if result.returncode == 0 and "-P INPUT DROP" in result.stdout.splitlines():
                dropping.append(f"{self.tools[version]} INPUT")
        return dropping

    def _install(self) -> None:
        if self.settings.single_use:
            raise FirewallError(
                "the iptables backend cannot do single-use grants "
                "(ipset members cannot be deleted from the packet path); use nftables"
            )
        for version, name in self.sets.items():
            family = "inet" if version == 4 else "inet6"
            self._run(
                [self.settings.ipset_binary, "create", name, "hash:ip,port", "family", family,
                 "timeout", str(SET_TIMEOUT), "comment", "-exist"],
                f"create ipset {name}",
            )
        for version in (4, 6):
            self._install_chain(version)
        self._installed = {version: self._chain_rules(version)[0] for version in (4, 6)}

    def _install_chain(self, version: int) -> None:
        tool = self.tools[version]
        # Chain may already exist from a previous run: create or flush it.
        if self._call([tool, "-w", "-N", self.chain]).returncode != 0:
            self._run([tool, "-w", "-F", self.chain], f"flush chain {self.chain}")
        rules: list[list[str]] = [
            ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN"],
            ["-m", "set", "--match-set", self.sets[version], "src,dst", "-j", "RETURN"],
        ]
        for request in sorted(set(self.settings.protect)):
            rules.append(["-p", request.proto, "--dport", str(request.port), *self.refusal(request.proto, version)])
        # Knock ports: spa hears them before netfilter; everyone else is refused.
        for proto, low, high in sorted(set(self.settings.quiet)):
            rules.append(["-p", proto, "--dport", f"{low}:{high}", *self.refusal(proto, version)])
        for rule in rules:
            self._run([tool, "-w", "-A", self.chain, *rule], f"add rule to {self.chain}")
        # Exactly one jump, at the top of INPUT: remove stale ones, then insert.
        self._remove_jumps(tool)
        self._run([tool, "-w", "-I", "INPUT", "1", "-j", self.chain], "hook the guard into INPUT")

    def refusal(self, proto: str, version: int) -> list[str]:
        """The target for a refused ``proto`` packet (nft_render.refusal, in iptables words).

        REJECT goes through the same nf_reject code as nft's reject: RST
        computed as the kernel's own, ICMP through icmp_send/icmpv6_send.
        """
        if self.settings.stealth == "drop":
            return ["-j", "DROP"]
        if proto == "tcp":
            return ["-j", "REJECT", "--reject-with", "tcp-reset"]
        return ["-j", "REJECT", "--reject-with", "icmp-port-unreachable" if version == 4 else "icmp6-port-unreachable"]

    def _remove_jumps(self, tool: str) -> None:
        for _ in range(MAX_STALE_JUMPS):
            if self._call([tool, "-w", "-D", "INPUT", "-j", self.chain]).returncode != 0:
                return

    def uninstall(self) -> None:
        """Remove the jumps, our chains and our sets; nothing else."""
        for version in (4, 6):
            tool = self.tools[version]
            self._remove_jumps(tool)
            self._call([tool, "-w", "-F", self.chain])
            self._call([tool, "-w", "-X", self.chain])
        for name in self.sets.values():
            self._call([self.settings.ipset_binary, "destroy", name])

    # -- integrity ---------------------------------------------------------------

    def damage(self) -> str | None:
        """Our chain's rules as at install, exactly one jump to it from INPUT,
        and both sets present: three spawns (~5 ms), once a second."""
        if self._installed is None:
            return "spa's chains and sets were never installed"
        found = []
        for version in (4, 6):
            rules, jumps = self._chain_rules(version)
            tool = self.tools[version]
            if not rules:
                found.append(f"{tool} chain {self.chain} is missing")
            elif rules != self._installed[version]:
                found.append(f"{tool} chain {self.chain} was changed")
            if jumps != 1:
                found.append(f"{tool} INPUT has {jumps} jumps to {self.chain} (want 1)")
        listed = self._call([self.settings.ipset_binary, "-n", "list"])
        names = set(listed.stdout.split()) if listed.returncode == 0 else set()
        found.extend(f"ipset {name} is missing" for name in self.sets.values() if name not in names)
        return "; ".join(found) or None

    def repair(self) -> None:
        """install() again: it flushes and refills the chain, puts back one
        jump, and creates only missing sets (members, the grants, stay)."""
        self._install()

    def _chain_rules(self, version: int) -> tuple[list[str], int]:
        """``-S`` lines defining our chain, and how many INPUT rules jump to it."""
        result = self._call([self.tools[version], "-w", "-S"])
        lines = result.stdout.splitlines() if result.returncode == 0 else []
        ours = [line for line in lines if line.split()[:2] in (["-N", self.chain], ["-A", self.chain])]
        jumps = sum(1 for line in lines if line == f"-A INPUT -j {self.chain}")
        return ours, jumps

    # -- grants ----------------------------------------------------------------

    def grant(self, grant: Grant) -> None:
        check_grant(grant, self.settings.protect)
        if self.settings.wants_single_use(grant.request, grant.single_use):
            raise FirewallError("the iptables backend cannot do single-use grants; use nftables")
        address = host(grant.address)
        # -exist turns a re-add into a renewal: timeout and comment are replaced.
        self._run(
            [self.settings.ipset_binary, "add", self.sets[address.version],
             self._member(address, grant.request), "timeout", str(grant.seconds),
             "comment", who(grant.key, grant.carrier.value), "-exist"],
            f"grant {grant.request}",
        )
        log.info("granted %s to %s for %ds (%s)", grant.request, address, grant.seconds, grant.key)

    def revoke(self, address: IPAddress, request: Request) -> None:
        address = host(address)
        self._run(
            [self.settings.ipset_binary, "del", self.sets[address.version],
             self._member(address, request), "-exist"],
            "revoke",
        )

    def live(self) -> list[LiveGrant]:
        grants: list[LiveGrant] = []
        for name in self.sets.values():
            result = self._call([self.settings.ipset_binary, "save", name])
            if result.returncode != 0:
                continue  # set not installed: nothing granted
            grants.extend(parse_save(result.stdout))
        grants.sort(key=lambda g: (g.seconds_left, str(g.address), g.request))
        return grants

    def close(self) -> None:
        """Nothing held open: grants stay until their ipset timeout."""

    # -- helpers ---------------------------------------------------------------

    @staticmethod
    def _member(address: IPAddress, request: Request) -> str:
        return f"{address},{request.proto}:{request.port}"

    @staticmethod
    def _call(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                list(argv), capture_output=True, text=True, timeout=10, check=False
            )
        except FileNotFoundError as error:
            raise FirewallError(f"{argv[0]} not found: install iptables and ipset") from error
        except subprocess.TimeoutExpired as error:
            raise FirewallError(f"{argv[0]} did not finish in 10 s") from error

    def _run(self, argv: Sequence[str], what: str) -> None:
        result = self._call(argv)
        if result.returncode != 0:
            message = (result.stderr or result.stdout).strip().splitlines()
            raise FirewallError(f"cannot {what}: {message[0] if message else 'failed'}")


def parse_save(text: str) -> list[LiveGrant]:
    """LiveGrants from ``ipset save`` output (one ``add`` line per member)."""
    grants = []
    for line in text.splitlines():
        match = SAVE_LINE.match(line.strip())
        if not match:
            continue
        comment = match["comment"]
        grants.append(
            LiveGrant(
                ipaddress.ip_address(match["addr"]),
                Request(match["proto"], int(match["port"])),
                float(match["timeout"] or 0),
                comment.rsplit("/", 1)[0] if comment else None,
            )
        )
    return grants
