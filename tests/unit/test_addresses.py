"""Issue 13, finding 6: IPv4-mapped addresses, refused wherever they enter.

alice's policy here allows IPv4 only from 198.51.100.0/24 but any IPv6
address; ``::ffff:203.0.113.5`` is the IPv4 host 203.0.113.5 in IPv6
syntax, which the firewall would open as IPv4. Every way of naming it must
get nothing, and every layer after the gate must refuse it on its own.
"""

from __future__ import annotations

import importlib.util
import ipaddress
from pathlib import Path

import pytest
from makings import CLIENT, NOW, SSH, Bench, make_bench
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.packet import Raw

from spa.client import tokens
from spa.core import addresses, datagram, otp
from spa.core.events import Accepted, Carrier, Form, Grant, OtpCode, Reason, Rejection
from spa.core.keys import ClientKey
from spa.core.policy import Policy
from spa.daemon import recheck
from spa.errors import SpaError
from spa.firewall import FirewallError, check_grant, netlink, nft_render
from spa.intake.packet import parse

MAPPED = ipaddress.ip_address("::ffff:203.0.113.5")
OFFICE_ONLY = (ipaddress.ip_network("198.51.100.0/24"), ipaddress.ip_network("::/0"))


@pytest.fixture
def office() -> Bench:
    return make_bench(sources=OFFICE_ONLY, allow_unbound=True)


def refused(decision: object) -> Reason:
    assert isinstance(decision, Rejection), f"{decision} opened something"
    return decision.reason


def test_the_policy_alone_would_let_the_mapped_form_through() -> None:
    """Why the rule must hold before policy: policy judges by family."""
    policy = Policy(open=(SSH,), sources=OFFICE_ONLY)
    assert policy.refusal(Carrier.DNS, MAPPED.ipv4_mapped, (SSH,), False) is not None
    assert policy.refusal(Carrier.DNS, MAPPED, (SSH,), False) is None


def test_an_extended_token_naming_a_mapped_address_gets_nothing(office: Bench) -> None:
    token = office.extended(address=MAPPED)
    assert refused(office.decide(Form.EXTENDED, token, carrier=Carrier.DNS)) == Reason.MALFORMED
    assert isinstance(office.decide(Form.EXTENDED, office.extended(address=CLIENT), carrier=Carrier.DNS), Accepted)


def test_a_datagram_naming_a_mapped_address_gets_nothing(office: Bench) -> None:
    body = datagram.Body(datagram.Mode.IPV6, (SSH,), 0, MAPPED)
    assert refused(office.decide(Form.DATAGRAM, office.datagram(body), carrier=Carrier.UDP)) == Reason.MALFORMED
    fine = datagram.Body(datagram.Mode.IPV4, (SSH,), 0, CLIENT)
    assert isinstance(office.decide(Form.DATAGRAM, office.datagram(fine), carrier=Carrier.UDP), Accepted)


def test_a_one_time_code_naming_a_mapped_address_gets_nothing(office: Bench) -> None:
    code = otp.totp(office.keyring.by_name["alice"].record.totp_secret or "").at(NOW)
    label = otp.to_label("alice", code, MAPPED)
    assert otp.parse_label(label) is None, "the label decoder let a mapped address in"
    # And the gate refuses one even if a decoder handed it over.
    decision = office.decide(Form.OTP, OtpCode("alice", code, MAPPED), carrier=Carrier.DNS)
    assert refused(decision) == Reason.MALFORMED
    assert otp.parse_label(otp.to_label("alice", code, ipaddress.ip_address("2001:db8::1"))) is not None


def test_a_packet_from_a_mapped_ipv6_source_is_dropped_at_intake() -> None:
    for layer in (UDP(dport=62201) / Raw(bytes(40)), TCP(dport=20000, flags="S"), ICMPv6EchoRequest(data=bytes(48))):
        packet = IPv6(src=str(MAPPED), dst="2001:db8::1") / layer
        assert parse(bytes(packet)) is None
        assert parse(bytes(IPv6(src="2001:db8::9", dst="2001:db8::1") / layer)) is not None


def test_a_socket_peer_in_mapped_form_is_the_ipv4_host() -> None:
    """The one conversion: the kernel's own spelling of an IPv4 peer."""
    assert addresses.from_socket("::ffff:203.0.113.5") == ipaddress.ip_address("203.0.113.5")
    assert addresses.from_socket("fe80::1%eth0") == ipaddress.ip_address("fe80::1")


def test_the_supervisor_recheck_refuses_a_mapped_grant(office: Bench) -> None:
    grant = Grant(MAPPED, SSH, 30, "alice", Carrier.DNS)
    from spa.firewall.settings import FirewallSettings

    why = recheck.refusal(grant, office.keyring, FirewallSettings(protect=(SSH,)))
    assert why is not None and "IPv4-mapped" in why


def test_the_firewall_refuses_a_mapped_grant_instead_of_converting_it() -> None:
    grant = Grant(MAPPED, SSH, 30, "alice", Carrier.DNS)
    with pytest.raises(FirewallError, match="IPv4-mapped"):
        check_grant(grant, (SSH,))
    with pytest.raises(FirewallError, match="IPv4-mapped"):
        nft_render.element(MAPPED, SSH)
    with pytest.raises(FirewallError, match="IPv4-mapped"):
        netlink.element_key(MAPPED, SSH)


def _client_key() -> ClientKey:
    return ClientKey("alice", 7, "192.0.2.1", bytes(32), (SSH,), secret=bytes(range(32)))


def test_the_client_refuses_to_name_a_mapped_address() -> None:
    key = _client_key()
    with pytest.raises(SpaError, match="IPv4-mapped"):
        tokens.extended_token(key, NOW, MAPPED)
    with pytest.raises(SpaError, match="IPv4-mapped"):
        tokens.spa_datagram(key, NOW, address=MAPPED)
    with pytest.raises(SpaError, match="IPv4-mapped"):
        tokens.compact_token(key, NOW, MAPPED)


def test_the_stdlib_client_refuses_to_name_a_mapped_address() -> None:
    path = Path(__file__).resolve().parents[2] / "clients" / "spa-knock.py"
    spec = importlib.util.spec_from_file_location("spa_knock_mapped", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(module.KnockError, match="IPv4-mapped"):
        module._address("::ffff:203.0.113.5")
    assert str(module._address("203.0.113.5")) == "203.0.113.5"


def test_a_policy_naming_mapped_networks_is_a_config_error(tmp_path: Path) -> None:
    from spa.core import tomlfile
    from spa.core.policy import read_policy
    from spa.errors import ConfigError

    path = tmp_path / "alice.toml"
    path.write_text('[policy]\nopen = ["tcp/22"]\nsources = ["::ffff:203.0.113.0/120"]\n')
    with pytest.raises(ConfigError) as problem:
        read_policy(tomlfile.load(path), ("policy",), None)
    assert "sources" in str(problem.value) and "203.0.113.0/24" in str(problem.value)
