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
from collections.abc import Iterator
from pathlib import Path

import pytest

from world import World, need_netns
from world.daemon import Served, make_served, remove
from world.netns import Agent, Host, wait_until

pytestmark = pytest.mark.netns

KNOCK = Path(__file__).resolve().parents[2] / "clients" / "knock.sh"
SERVER = "10.77.1.1"


class Knocked:
    def __init__(self, world: World, served: Served, key: Path) -> None:
        self.world = world
        self.served = served
        self.key = key
        self.alice: Agent = world.agent(world.alice)
        self.bob: Agent = world.agent(world.bob)

    def knock(self, host: Host, *argv: str) -> subprocess.CompletedProcess[str]:
        result = host.run(["sh", str(KNOCK), "-k", str(self.key), *argv], check=False, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    def probe(self, agent: Agent, port: int = 22) -> str:
        host = self.world.alice if agent is self.alice else self.world.bob
        return agent.probe(self.world.server_address(host), port)

    def opens_for_alice_only(self) -> None:
        assert wait_until(lambda: self.probe(self.alice) == "open", 3, 0.05), self.served.log()
        assert self.probe(self.bob) == "dropped", "the grant leaked to another address"
        assert self.probe(self.alice, 2222) == "dropped", "the grant leaked to another port"


@pytest.fixture
def knocked(request: pytest.FixtureRequest) -> Iterator[Knocked]:
    need_netns("nft", "ping", "nslookup", "openssl", libraries=("nftables",))
    world = World()
    request.addfinalizer(world.close)
    world.build()
    world.echo_server(22, 2222)
    served = make_served(world)
    request.addfinalizer(lambda: remove(served))
    served.keygen("alice")
    key = served.directory / "alice.spakey"
    assert key.stat().st_mode & 0o077 == 0, "spa keygen wrote a key others can read"
    served.start()
    k = Knocked(world, served, key)
    assert k.probe(k.alice) == "dropped", "the protected port answered before any knock"
    yield k


def test_ping(knocked: Knocked) -> None:
    k = knocked
    result = k.knock(k.world.alice, "-v", "icmp", SERVER)
    assert "ping -c 2 -p" not in result.stdout  # it ran ping, not printed it
    k.opens_for_alice_only()
    assert "accepted alice via icmp: 10.77.1.2 tcp/22 for 3 s" in k.served.log()
    assert "replayed" not in k.served.log(), "ping's second packet counted as a replay"


def test_ping_over_ipv6(knocked: Knocked) -> None:
    k = knocked
    k.knock(k.world.alice, "fd77:1::1")  # ip route get finds fd77:1::2
    assert wait_until(lambda: k.alice.probe("fd77:1::1", 22) == "open", 3, 0.05), k.served.log()
    assert k.probe(k.alice) == "dropped", "an IPv6 knock opened IPv4"
    assert "accepted alice via icmp: fd77:1::2 tcp/22" in k.served.log()


def test_ping_the_key_files_server_by_default(knocked: Knocked) -> None:
    k = knocked
    k.knock(k.world.alice)  # icmp to the key's server (10.77.1.1), address from ip route get
    k.opens_for_alice_only()


def test_dns_asking_the_server_directly(knocked: Knocked) -> None:
    k = knocked
    k.knock(k.world.alice, "-v", "dns", "-s", SERVER)
    k.opens_for_alice_only()
    assert k.served.wait_log("accepted alice via dns", 3), k.served.log()
    assert "replayed" not in k.served.log(), "nslookup's A and AAAA queries counted as a replay"


def test_dns_through_a_resolver_names_the_address(knocked: Knocked) -> None:
    """Bob's stub resolver stands in for a recursive one: the query comes from
    bob's address, the extended token names alice's, and only alice opens."""
    k = knocked
    # ip netns exec bind-mounts /etc/netns/NAME/resolv.conf over /etc/resolv.conf.
    netns_etc = Path("/etc/netns")
    made_netns_etc = not netns_etc.exists()
    config = netns_etc / k.world.bob.netns
    config.mkdir(parents=True)
    try:
        (config / "resolv.conf").write_text("nameserver 10.77.2.1\noptions timeout:2 attempts:1\n")
        k.knock(k.world.bob, "-v", "dns", "-i", "10.77.1.2")
    finally:
        (config / "resolv.conf").unlink(missing_ok=True)
        config.rmdir()
        if made_netns_etc:
            netns_etc.rmdir()
    k.opens_for_alice_only()
    assert "accepted alice via dns from 10.77.2.2: 10.77.1.2 tcp/22" in k.served.log()


def test_a_stale_clock_opens_nothing(knocked: Knocked) -> None:
    k = knocked
    stale = str(int(time.time()) - 600)
    k.knock(k.world.alice, "-t", stale, SERVER)
    assert k.served.wait_log("outside time window", 3), k.served.log()
    assert k.probe(k.alice) == "dropped"
    assert "accepted" not in k.served.log()
