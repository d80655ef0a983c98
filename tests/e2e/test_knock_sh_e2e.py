"""clients/knock.sh against ``spa serve`` in the namespace world.

The script runs inside alice's namespace exactly as a person would run it
(``sh knock.sh -k alice.spakey ...``): it finds its own address with
``ip route get``, builds the token with openssl and sends it with the stock
ping or nslookup. Each test checks what alice would see: the protected port
is dropped before, opens for her address after, and nothing else opens.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from world import need_netns
from world.knocking import SERVER, Knocking, prepare, use_resolver
from world.netns import Host, wait_until

pytestmark = pytest.mark.netns

KNOCK = Path(__file__).resolve().parents[2] / "clients" / "knock.sh"


def knock(k: Knocking, host: Host, *argv: str) -> subprocess.CompletedProcess[str]:
    result = host.run(["sh", str(KNOCK), "-k", str(k.key_path), *argv], check=False, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def opens_for_alice_only(k: Knocking) -> None:
    assert k.opens(), k.served.log()
    k.only_alice()


@pytest.fixture
def knocked(request: pytest.FixtureRequest) -> Knocking:
    need_netns("nft", "ping", "nslookup", "openssl", libraries=("nftables",))
    k = prepare(request)
    assert k.key_path.stat().st_mode & 0o077 == 0, "spa keygen wrote a key others can read"
    k.served.start()
    k.closed_before()
    return k


def test_ping(knocked: Knocking) -> None:
    k = knocked
    result = knock(k, k.world.alice, "-v", "icmp", SERVER)
    assert "ping -c 2 -p" not in result.stdout  # it ran ping, not printed it
    opens_for_alice_only(k)
    assert "accepted alice via icmp: 10.77.1.2 tcp/22 for 3 s" in k.served.log()
    assert "replayed" not in k.served.log(), "ping's second packet counted as a replay"


def test_ping_over_ipv6(knocked: Knocking) -> None:
    k = knocked
    knock(k, k.world.alice, "fd77:1::1")  # ip route get finds fd77:1::2
    assert wait_until(lambda: k.alice.probe("fd77:1::1", 22) == "open", 3, 0.05), k.served.log()
    assert k.probe(k.alice) == "refused", "an IPv6 knock opened IPv4"
    assert "accepted alice via icmp: fd77:1::2 tcp/22" in k.served.log()


def test_ping_the_key_files_server_by_default(knocked: Knocking) -> None:
    k = knocked
    knock(k, k.world.alice)  # icmp to the key's server (10.77.1.1), address from ip route get
    opens_for_alice_only(k)


def test_dns_asking_the_server_directly(knocked: Knocking) -> None:
    k = knocked
    knock(k, k.world.alice, "-v", "dns", "-s", SERVER)
    opens_for_alice_only(k)
    assert k.served.wait_log("accepted alice via dns", 3), k.served.log()
    assert "replayed" not in k.served.log(), "nslookup's A and AAAA queries counted as a replay"


def test_dns_through_a_resolver_names_the_address(knocked: Knocking) -> None:
    """Bob's stub resolver stands in for a recursive one: the query comes from
    bob's address, the extended token names alice's, and only alice opens."""
    k = knocked
    use_resolver(k.world, k.world.bob, "10.77.2.1")
    knock(k, k.world.bob, "-v", "dns", "-i", "10.77.1.2")
    opens_for_alice_only(k)
    assert "accepted alice via dns from 10.77.2.2: 10.77.1.2 tcp/22" in k.served.log()


def test_a_stale_clock_opens_nothing(knocked: Knocking) -> None:
    k = knocked
    stale = str(int(time.time()) - 600)
    knock(k, k.world.alice, "-t", stale, SERVER)
    assert k.served.wait_log("outside time window", 3), k.served.log()
    assert k.probe(k.alice) == "refused"
    assert "accepted" not in k.served.log()
