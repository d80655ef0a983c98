"""What the nftables backend would send to the kernel, checked without root."""

from __future__ import annotations

import ipaddress
import re

import pytest

from spa.core.events import Carrier, Grant, Request
from spa.firewall import FirewallError, FirewallSettings, check_grant, nft_render
from spa.firewall.settings import FirewallSettingsError

SSH, RDP = Request("tcp", 22), Request("tcp", 3389)
SETTINGS = FirewallSettings(protect=(SSH, RDP, Request("udp", 53)))


def make_grant(address: str = "192.0.2.7", seconds: int = 30, key: str = "alice",
               request: Request = SSH) -> Grant:
    return Grant(ipaddress.ip_address(address), request, seconds, key, Carrier.DNS)


def chain(script: str, name: str) -> list[str]:
    """The rules of chain ``name`` in a rendered guard, one stripped line each."""
    body = script.split(f"chain {name} {{\n")[1].split("\t}")[0]
    return [line.strip() for line in body.splitlines() if line.strip()]


def test_guard_refuses_protected_ports_unless_established_or_marked() -> None:
    script = nft_render.guard_script(SETTINGS)
    assert "table inet spa_guard {" in script
    assert "flags owner" not in script  # the guard must outlive the daemon
    assert "elements = { 6 . 22, 6 . 3389, 17 . 53 }" in script
    assert chain(script, "input") == [
        "type filter hook input priority 0; policy accept;",
        "meta l4proto != { tcp, udp } accept",  # a packet too short for ports gets the kernel's own answer
        "meta l4proto . th dport != @protected accept",
        "ct state established,related accept",
        "meta mark & 0x53500000 == 0x53500000 accept",
        "ct mark & 0x53500000 == 0x53500000 accept",  # the flow a single-use grant admitted
        "jump refuse",
    ]


def test_stealth_closed_answers_as_an_unused_port_and_drop_answers_nothing() -> None:
    # closed (the default): a RST for TCP, port unreachable (ICMP or ICMPv6) for the rest (UDP).
    assert chain(nft_render.guard_script(SETTINGS), "refuse") == [
        "udp length < 8 drop",  # the kernel drops such a header unanswered (an outside probe told them apart)
        "meta l4proto tcp reject with tcp reset",
        "reject with icmpx type port-unreachable",
    ]
    dropping = FirewallSettings(protect=SETTINGS.protect, stealth="drop")
    assert chain(nft_render.guard_script(dropping), "refuse") == ["drop"]
    # Only the refusal differs between the modes: what is accepted stays the same.
    assert chain(nft_render.guard_script(dropping), "input") == chain(nft_render.guard_script(SETTINGS), "input")
    assert "stealth =\n# drop" in nft_render.guard_script(dropping)  # the boot file says which


@pytest.mark.parametrize("stealth", ["closed", "drop"])
def test_knock_ports_are_refused_like_protected_ones(stealth: str) -> None:
    settings = FirewallSettings(protect=(SSH,), quiet=(("udp", 62201, 62201), ("tcp", 20000, 59999)),
                                stealth=stealth)
    script = nft_render.guard_script(settings)
    assert "flags interval" in script and "elements = { 6 . 20000-59999, 17 . 62201 }" in script
    assert "@quiet" not in nft_render.guard_script(SETTINGS)
    assert chain(script, "input") == [
        "type filter hook input priority 0; policy accept;",
        "meta l4proto != { tcp, udp } accept",
        "meta l4proto . th dport != @protected meta l4proto . th dport != @quiet accept",
        "ct state established,related accept",  # replies to our own connections from those ports
        "meta l4proto . th dport @quiet jump refuse",  # before the mark: a knock port is never granted
        "meta mark & 0x53500000 == 0x53500000 accept",
        "ct mark & 0x53500000 == 0x53500000 accept",
        "jump refuse",
    ]
    assert chain(script, "refuse") == nft_render.refusal(settings)


CHAINS = """table inet spa_guard {
\tchain refuse {
\t}
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t}
}
table ip filter {
\tchain INPUT {
\t\ttype filter hook input priority filter; policy drop;
\t}
\tchain OUTPUT {
\t\ttype filter hook output priority filter; policy drop;
\t}
}
table inet host {
\tchain inbound {
\t\ttype filter hook input priority 10; policy drop;
\t}
}
"""


def test_a_default_drop_host_policy_is_seen_and_closed_warned_about() -> None:
    dropping = nft_render.dropping_input_chains(CHAINS)
    assert dropping == ["ip filter INPUT", "inet host inbound"]  # not the output chain, not ours
    warning = nft_render.stealth_contrast(SETTINGS, dropping)
    assert warning is not None and "ip filter INPUT, inet host inbound drop by default" in warning
    assert 'set [firewall] stealth = "drop"' in warning
    assert nft_render.stealth_contrast(SETTINGS, []) is None
    assert nft_render.stealth_contrast(FirewallSettings(stealth="drop"), dropping) is None


def test_scripts_recreate_their_table_in_one_transaction() -> None:
    guard = nft_render.guard_script(SETTINGS).splitlines()
    assert [line for line in guard if not line.startswith("#")][:2] == [
        "table inet spa_guard", "delete table inet spa_guard"]
    grant = nft_render.grant_script(SETTINGS).splitlines()
    assert grant[:2] == ["table inet spa_grant { flags owner; }", "delete table inet spa_grant"]
    unowned = nft_render.grant_script(FirewallSettings(owner=False))
    assert "owner" not in unowned


def test_grant_chain_runs_first_and_only_marks() -> None:
    script = nft_render.grant_script(SETTINGS)
    assert "priority -10;" in script
    assert "accept\n" not in script.split("chain input")[1].split("policy accept;")[1]
    for name in ("grants4", "grants6", "once4", "once6"):
        assert f"set {name} {{" in script
    assert ("ct state new ip saddr . meta l4proto . th dport @once4 "
            "delete @once4 { ip saddr . meta l4proto . th dport } "
            "meta mark set meta mark | 0x53500000 ct mark set ct mark | 0x53500000") in script


def test_grant_renews_by_add_delete_add() -> None:
    commands = nft_render.grant_commands(SETTINGS, make_grant(), single_use=False).splitlines()
    assert commands == [
        'add element inet spa_grant grants4 { 192.0.2.7 . 6 . 22 timeout 30s comment "alice/dns" }',
        "delete element inet spa_grant grants4 { 192.0.2.7 . 6 . 22 }",
        'add element inet spa_grant grants4 { 192.0.2.7 . 6 . 22 timeout 30s comment "alice/dns" }',
    ]


def test_ipv6_single_use_and_mapped_addresses() -> None:
    v6 = nft_render.grant_commands(SETTINGS, make_grant("2001:db8::5"), single_use=True)
    assert "once6 { 2001:db8::5 . 6 . 22 timeout" in v6
    # An IPv4-mapped address is refused, not turned into the IPv4 host (spa.core.addresses).
    with pytest.raises(FirewallError, match="IPv4-mapped"):
        nft_render.grant_commands(SETTINGS, make_grant("::ffff:192.0.2.9"), single_use=False)


@pytest.mark.parametrize("key", ['a" }; flush ruleset; add x "', "a\nflush ruleset", "ü" * 200])
def test_hostile_key_names_cannot_escape_the_comment(key: str) -> None:
    commands = nft_render.grant_commands(SETTINGS, make_grant(key=key), single_use=False)
    comments = re.findall(r'comment "([^"]*)"', commands)
    assert len(comments) == 2
    assert all(re.fullmatch(r"[A-Za-z0-9_.@+:/=-]{1,64}", c) for c in comments)
    assert len(commands.splitlines()) == 3


def test_revoke_tolerates_a_missing_element() -> None:
    lines = nft_render.revoke_commands(SETTINGS, ipaddress.ip_address("192.0.2.7"), SSH).splitlines()
    assert lines == [
        "add element inet spa_grant grants4 { 192.0.2.7 . 6 . 22 timeout 1s }",
        "delete element inet spa_grant grants4 { 192.0.2.7 . 6 . 22 }",
        "add element inet spa_grant once4 { 192.0.2.7 . 6 . 22 timeout 1s }",
        "delete element inet spa_grant once4 { 192.0.2.7 . 6 . 22 }",
    ]


def test_backend_refuses_grants_outside_policy() -> None:
    with pytest.raises(FirewallError, match="not a protected port"):
        check_grant(make_grant(request=Request("tcp", 80)), SETTINGS.protect)
    with pytest.raises(FirewallError, match="seconds"):
        check_grant(make_grant(seconds=0), SETTINGS.protect)
    with pytest.raises(FirewallError, match="single host"):
        check_grant(make_grant("0.0.0.0"), SETTINGS.protect)
    check_grant(make_grant(), SETTINGS.protect)


# As printed by libnftables 1.0.6 for `nft -j list table inet spa_grant`.
LISTING = {
    "nftables": [
        {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
        {"table": {"family": "inet", "name": "spa_grant", "handle": 3}},
        {"set": {"family": "inet", "name": "grants4", "table": "spa_grant",
                 "type": ["ipv4_addr", "inet_proto", "inet_service"], "flags": ["timeout"],
                 "elem": [{"elem": {"val": {"concat": ["10.9.0.2", 6, 22]}, "timeout": 30,
                                    "expires": 12, "comment": "alice/dns"}}]}},
        {"set": {"family": "inet", "name": "once6", "table": "spa_grant",
                 "type": ["ipv6_addr", "inet_proto", "inet_service"],
                 "elem": [{"elem": {"val": {"concat": ["fd00::2", "tcp", 3389]},
                                    "timeout": 9, "expires": 4}},
                          {"elem": {"val": {"concat": ["fd00::3", 99, 1]}, "expires": 1}}]}},
        {"set": {"family": "inet", "name": "grants6", "table": "spa_grant", "elem": []}},
        {"chain": {"family": "inet", "table": "spa_grant", "name": "input"}},
    ]
}


def test_parse_live_reads_sets_back_soonest_first() -> None:
    grants = nft_render.parse_live(LISTING, SETTINGS)
    assert [(str(g.address), str(g.request), g.seconds_left, g.key, g.single_use)
            for g in grants] == [
        ("fd00::2", "tcp/3389", 4.0, None, True),
        ("10.9.0.2", "tcp/22", 12.0, "alice", False),
    ]


def test_parse_tables_from_text_listing() -> None:
    listing = "table inet spa_guard\ntable inet spa_grant\ntable ip filter\ntable inet host_fw\n"
    assert nft_render.parse_tables(listing, "inet") == {"spa_guard", "spa_grant", "host_fw"}


@pytest.mark.parametrize(
    ("quiet", "message"),
    [
        ((("sctp", 1, 2),), "quiet port range"),
        ((("udp", 9, 3),), "quiet port range"),
        ((("tcp", 20, 30),), "both protected and a knock port"),
    ],
)
def test_quiet_ranges_are_checked(quiet: tuple[tuple[str, int, int], ...], message: str) -> None:
    with pytest.raises(FirewallSettingsError, match=message):
        FirewallSettings(protect=(SSH,), quiet=quiet)
