"""nftables text for spa's two tables, and reading grants back from JSON.

Pure functions, no I/O: everything the nftables backend sends to the kernel is
rendered here from validated values (ipaddress objects, ints, the two protocol
names a :class:`Request` allows, identifiers checked by FirewallSettings), so
no string from a packet or a config file is ever pasted into nft syntax raw.

Layout (see docs/firewall.md):

* guard table (permanent, not owned): refuses the protected and knock ports
  (RST / port unreachable, or a silent drop with ``stealth = "drop"``) unless
  the packet belongs to an established flow or carries spa's mark;
* grant table (``flags owner``): timeout sets of ``address . proto . port``
  and a chain, running before the guard on the same hook, that marks packets
  matching a set element. Single-use elements live in their own sets and are
  deleted by the first new connection that matches them.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from spa.core.events import PROTOCOL_NAMES, PROTOCOLS, Grant, IPAddress, Request

from .base import LiveGrant, host
from .settings import FirewallSettings

# Set names inside the grant table: (ip version, single use) -> name.
SETS = {
    (4, False): "grants4",
    (6, False): "grants6",
    (4, True): "once4",
    (6, True): "once6",
}
SET_KINDS = {name: kind for kind, name in SETS.items()}

COMMENT_UNSAFE = re.compile(r"[^A-Za-z0-9_.@+:/=-]")
COMMENT_MAX = 64


def who(key: str, carrier: str) -> str:
    """The element comment: ``key/carrier``, reduced to a quotable-safe alphabet.

    nft comments are double-quoted strings with no escape for ``"``; key names
    come from our own config but we still never trust a string's alphabet.
    """
    text = f"{key}/{carrier}"
    return COMMENT_UNSAFE.sub("_", text)[:COMMENT_MAX]


def set_for(address: IPAddress, single_use: bool) -> str:
    return SETS[(address.version, single_use)]


def element(address: IPAddress, request: Request) -> str:
    """``address . proto-number . port``: the key of one grant in a set."""
    address = host(address)
    # Numbers, not names, for the protocol: no services/protocols lookups and
    # nothing but digits and the address's own characters in the command.
    return f"{address} . {request.proto_number} . {request.port}"


def mark_hex(settings: FirewallSettings) -> str:
    return f"0x{settings.mark:08x}"


def refusal(settings: FirewallSettings) -> list[str]:
    """The rules of the guard's ``refuse`` chain: what a refused packet gets.

    ``closed``: what the kernel sends for a port no socket uses. Its TCP code
    answers every segment but a RST with a RST (nf_reject computes seq/ack
    the same way and also ignores RSTs); its UDP code answers with ICMP or
    ICMPv6 port unreachable through icmp_send/icmpv6_send, the very function
    nf_reject calls, so the kernel's ICMP rate limits count both alike. Only
    tcp and udp ever get here (the guard accepts every other protocol first).
    A UDP header whose length field is under 8 the kernel drops unanswered,
    and so does this chain; one whose length runs past the packet it drops
    too, which nft cannot see (docs/firewall.md, "Residual differences").
    ``drop``: nothing, for hosts that drop every closed port themselves.
    """
    if settings.stealth == "drop":
        return ["drop"]
    return ["udp length < 8 drop", "meta l4proto tcp reject with tcp reset", "reject with icmpx type port-unreachable"]


def guard_script(settings: FirewallSettings) -> str:
    """The guard table as an nft script that (re)creates it atomically.

    ``table X`` + ``delete table X`` + the definition make the script
    idempotent in one transaction: loading it twice, or over an older guard,
    never leaves a moment without the refusing rule. Usable as the boot-time file.

    Knock ports (``settings.quiet``) are refused unconditionally, except for
    replies to connections this host opened (an outgoing connection may use
    a source port inside the one-time sequence range). A refused packet goes
    to the ``refuse`` chain (:func:`refusal`), the one place ``stealth`` acts.
    """
    t = f"{settings.family} {settings.guard_table}"
    ports = ", ".join(f"{r.proto_number} . {r.port}" for r in sorted(set(settings.protect)))
    mark = mark_hex(settings)
    listed = ", ".join(str(r) for r in sorted(set(settings.protect)))
    quiet_set = ""
    other = "meta l4proto . th dport != @protected accept"
    quiet_rule = ""
    if settings.quiet:
        ranges = ", ".join(
            f"{PROTOCOLS[proto]} . {low}" if low == high else f"{PROTOCOLS[proto]} . {low}-{high}"
            for proto, low, high in sorted(set(settings.quiet))
        )
        quiet_set = (
            f"\tset quiet {{\n"
            f"\t\ttype inet_proto . inet_service\n"
            f"\t\tflags interval\n"
            f"\t\telements = {{ {ranges} }}\n"
            f"\t}}\n"
            f"\n"
        )
        other = "meta l4proto . th dport != @protected meta l4proto . th dport != @quiet accept"
        quiet_rule = "\t\tmeta l4proto . th dport @quiet jump refuse\n"
    answer = "answers as an unused port does" if settings.stealth == "closed" else "answers nothing"
    refuse = "".join(f"\t\t{rule}\n" for rule in refusal(settings))
    return (
        f"# spa guard: refuses {listed} unless spa granted the flow; stealth =\n"
        f"# {settings.stealth}: a refused packet {answer}. Keep this loaded\n"
        f"# at boot so the ports stay closed while spa is not running.\n"
        f"table {t}\n"
        f"delete table {t}\n"
        f"table {t} {{\n"
        f"\tset protected {{\n"
        f"\t\ttype inet_proto . inet_service\n"
        f"\t\telements = {{ {ports} }}\n"
        f"\t}}\n"
        f"\n"
        f"{quiet_set}"
        f"\tchain refuse {{\n"
        f"{refuse}"
        f"\t}}\n"
        f"\n"
        f"\tchain input {{\n"
        f"\t\ttype filter hook input priority {settings.guard_priority}; policy accept;\n"
        # Not ours: the kernel answers other protocols as it would (a packet
        # too short to hold ports must not fall through to the refusal).
        f"\t\tmeta l4proto != {{ tcp, udp }} accept\n"
        f"\t\t{other}\n"
        f"\t\tct state established,related accept\n"
        f"{quiet_rule}"
        f"\t\tmeta mark & {mark} == {mark} accept\n"
        # The flow a single-use grant admitted: its later packets before any
        # reply (UDP stays "new" until then) belong to it, not to a new flow.
        f"\t\tct mark & {mark} == {mark} accept\n"
        f"\t\tjump refuse\n"
        f"\t}}\n"
        f"}}\n"
    )


def grant_script(settings: FirewallSettings) -> str:
    """The grant table, created fresh (with ``flags owner`` unless disabled).

    The chain only sets the mark; the verdict is the guard's. A plain
    ``accept`` here would not help: every base chain on the hook still runs.
    """
    t = f"{settings.family} {settings.grant_table}"
    mark = mark_hex(settings)
    flags = "\tflags owner\n" if settings.owner else ""
    sets = "".join(
        f"\tset {name} {{\n"
        f"\t\ttype {'ipv4_addr' if version == 4 else 'ipv6_addr'} . inet_proto . inet_service\n"
        f"\t\tflags timeout\n"
        f"\t}}\n"
        for (version, _once), name in SETS.items()
    )
    setmark = f"meta mark set meta mark | {mark}"
    setconn = f"ct mark set ct mark | {mark}"
    key4 = "ip saddr . meta l4proto . th dport"
    key6 = "ip6 saddr . meta l4proto . th dport"
    # The placeholder must carry the same flags: the kernel refuses to change
    # an existing table's owner flag, even in a batch that then deletes it.
    placeholder = f"table {t} {{ flags owner; }}" if settings.owner else f"table {t}"
    return (
        f"{placeholder}\n"
        f"delete table {t}\n"
        f"table {t} {{\n"
        f"{flags}"
        f"{sets}"
        f"\tchain input {{\n"
        f"\t\ttype filter hook input priority {settings.grant_priority}; policy accept;\n"
        f"\t\t{key4} @grants4 {setmark}\n"
        f"\t\t{key6} @grants6 {setmark}\n"
        # Only a new flow may consume a single-use element: packets of an
        # older session from the same host must not use it up.
        # The connection it admitted is marked too (the guard accepts its
        # later packets): one connection, however many packets it opens with.
        f"\t\tct state new {key4} @once4 delete @once4 {{ {key4} }} {setmark} {setconn}\n"
        f"\t\tct state new {key6} @once6 delete @once6 {{ {key6} }} {setmark} {setconn}\n"
        f"\t}}\n"
        f"}}\n"
    )


def grant_commands(settings: FirewallSettings, grant: Grant, single_use: bool) -> str:
    """One transaction that opens (or renews) a grant.

    add, delete, add: the first add makes the delete safe when the element is
    new, the delete drops an older element so the final add sets a fresh
    timeout and comment. Kernels before ~6.10 ignore a re-add's timeout, so
    this is how renewal works everywhere.
    """
    address = host(grant.address)
    target = f"{settings.family} {settings.grant_table} {set_for(address, single_use)}"
    key = element(address, grant.request)
    full = f'{key} timeout {grant.seconds}s comment "{who(grant.key, grant.carrier.value)}"'
    return (
        f"add element {target} {{ {full} }}\n"
        f"delete element {target} {{ {key} }}\n"
        f"add element {target} {{ {full} }}\n"
    )


def revoke_commands(settings: FirewallSettings, address: IPAddress, request: Request) -> str:
    """Remove a grant from both its sets; no error when it is already gone."""
    address = host(address)
    key = element(address, request)
    lines = []
    for single_use in (False, True):
        target = f"{settings.family} {settings.grant_table} {set_for(address, single_use)}"
        lines.append(f"add element {target} {{ {key} timeout 1s }}")
        lines.append(f"delete element {target} {{ {key} }}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class _Element:
    address: IPAddress
    request: Request
    seconds_left: float
    comment: str | None


def parse_live(document: dict[str, Any], settings: FirewallSettings) -> list[LiveGrant]:
    """LiveGrants from ``nft -j list table <grant table>`` output."""
    grants: list[LiveGrant] = []
    for item in document.get("nftables", []):
        nft_set = item.get("set")
        if not nft_set or nft_set.get("table") != settings.grant_table:
            continue
        kind = SET_KINDS.get(nft_set.get("name", ""))
        if kind is None:
            continue
        for entry in nft_set.get("elem", []):
            parsed = _parse_element(entry)
            if parsed is None:
                continue
            key = parsed.comment.rsplit("/", 1)[0] if parsed.comment else None
            grants.append(
                LiveGrant(parsed.address, parsed.request, parsed.seconds_left, key, kind[1])
            )
    grants.sort(key=lambda g: (g.seconds_left, str(g.address), g.request))
    return grants


def _parse_element(entry: Any) -> _Element | None:
    if isinstance(entry, dict) and "elem" in entry:
        body = entry["elem"]
        value = body.get("val")
        expires = float(body.get("expires", body.get("timeout", 0)))
        comment = body.get("comment")
    else:  # an element without timeout or comment is listed bare
        body, value, expires, comment = {}, entry, 0.0, None
    if not isinstance(value, dict) or len(value.get("concat", [])) != 3:
        return None
    text, proto, port = value["concat"]
    if isinstance(proto, str):
        proto = PROTOCOLS.get(proto, -1)
    if proto not in PROTOCOL_NAMES or not isinstance(port, int):
        return None
    return _Element(
        ipaddress.ip_address(text), Request(PROTOCOL_NAMES[proto], port), expires, comment
    )


def parse_tables(listing: str, family: str) -> set[str]:
    """Table names of ``family`` from ``nft list tables`` text output."""
    names = set()
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "table" and parts[1] == family:
            names.add(parts[2])
    return names


def dropping_input_chains(listing: str) -> list[str]:
    """``family table chain`` of each input-hook base chain whose policy is drop,
    from ``nft list chains`` text output (iptables-nft's INPUT shows up here too)."""
    found = []
    table = chain = ""
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "table":
            table, chain = f"{parts[1]} {parts[2]}", ""
        elif len(parts) >= 2 and parts[0] == "chain":
            chain = parts[1]
        elif "hook input" in line and "policy drop" in line and chain:
            found.append(f"{table} {chain}")
    return found


def stealth_contrast(settings: FirewallSettings, dropping: list[str]) -> str | None:
    """A warning when ``stealth = "closed"`` makes spa's ports the odd ones out.

    On a host whose own input policy drops, unused ports are silent
    (``filtered``); a guard answering RST / port unreachable would then mark
    exactly spa's ports. Only a chain *policy* is seen: a ruleset ending in
    an explicit ``drop`` rule is not, and docs/firewall.md says so.
    """
    if settings.stealth != "closed" or not dropping:
        return None
    return (
        f"stealth = \"closed\", but {', '.join(dropping)} drop{'s' if len(dropping) == 1 else ''} "
        "by default: spa's ports answer as closed ports while the host's other closed ports "
        "stay silent, so a scan picks them out; set [firewall] stealth = \"drop\""
    )
