"""clients/spa-knock.py against a real ``spa serve`` in the namespace world.

The client runs inside alice's namespace exactly as a person copies it:
``python3 -I -S clients/spa-knock.py --key alice.spakey`` (isolated and
without site-packages, so it can use nothing but the standard library).
Each knock must open the protected port for alice only; a stale one opens
nothing.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from world import need_netns
from world.knocking import SERVER, Knocking, prepare, use_resolver
from world.netns import Host, wait_until

pytestmark = pytest.mark.netns

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "spa-knock.py"
PYTHON = shutil.which("python3") or "python3"


def client(k: Knocking, *argv: str, host: Host | None = None) -> str:
    """Run spa-knock.py in ``host`` (alice's namespace by default) with no site-packages; its output."""
    host = host or k.world.alice
    result = host.run([PYTHON, "-I", "-S", str(CLIENT), "--key", str(k.key_path), *argv], check=False, timeout=30)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0, f"spa-knock.py {' '.join(argv)}: {result.stderr.strip()}"
    return result.stdout


@pytest.fixture
def knocking(request: pytest.FixtureRequest) -> Knocking:
    need_netns("nft", "python3", "nslookup", "ping", libraries=("nftables",))
    k = prepare(request, "--open", "tcp/22,tcp/2222")
    k.served.start()
    return k


def test_udp_datagram_opens_for_alice_only(knocking: Knocking) -> None:
    k = knocking
    k.closed_before()
    out = client(k, )  # HOST, port and address all from the key file and the route
    assert f"to {SERVER} port 62201 (from 10.77.1.2)" in out
    assert k.opens(), k.served.log()
    k.only_alice()
    assert "accepted alice via udp: 10.77.1.2 tcp/22" in k.served.log()


def test_udp_datagram_opens_two_ports(knocking: Knocking) -> None:
    k = knocking
    k.closed_before()
    client(k, "--open", "tcp/22,tcp/2222")
    assert k.opens(22) and k.opens(2222), k.served.log()
    k.only_alice(other_port_closed=False)


def test_udp_datagram_over_ipv6(knocking: Knocking) -> None:
    k = knocking
    assert k.alice.probe("fd77:1::1", 22) == "refused"
    client(k, "fd77:1::1")
    assert wait_until(lambda: k.alice.probe("fd77:1::1", 22) == "open", 3, 0.05), k.served.log()
    assert k.probe() == "refused", "an IPv6 knock opened IPv4"


def test_dns_query_straight_to_the_server(knocking: Knocking) -> None:
    k = knocking
    k.closed_before()
    out = client(k, "--via", "dns", "--dns-server", SERVER)
    assert out.startswith("queried ") and f"at {SERVER} (answer: NOERROR)" in out
    assert k.opens(), k.served.log()
    k.only_alice()
    assert "accepted alice via dns: 10.77.1.2 tcp/22" in k.served.log()


def test_dns_by_the_system_nslookup(knocking: Knocking) -> None:
    k = knocking
    k.closed_before()
    out = client(k, "--via", "dns", "--dns-server", SERVER, "--nslookup")
    assert "queried " in out and "with nslookup" in out
    assert k.opens(), k.served.log()
    k.only_alice()


def test_extended_token_names_alice_from_elsewhere(knocking: Knocking) -> None:
    k = knocking
    k.closed_before()
    # --dns-server other than HOST is a resolver: the query's source is not the address to open.
    client(k, "--via", "dns", "--dns-server", "10.77.2.1", "--ip", "10.77.1.2", host=k.world.bob)
    assert k.opens(), k.served.log()
    k.only_alice()
    assert "accepted alice via dns from 10.77.2.2: 10.77.1.2 tcp/22" in k.served.log()


def test_dns_through_the_resolver_of_resolv_conf(knocking: Knocking) -> None:
    """The default: ask the first nameserver of /etc/resolv.conf. In bob's
    namespace that is the server itself, standing in for a recursive resolver:
    the query comes from bob, the extended token names alice."""
    k = knocking
    k.closed_before()
    use_resolver(k.world, k.world.bob, "10.77.2.1")
    out = client(k, "--via", "dns", "--ip", "10.77.1.2", host=k.world.bob)
    assert "through the resolver 10.77.2.1 (answer: NOERROR)" in out
    assert k.opens(), k.served.log()
    k.only_alice()
    assert "accepted alice via dns from 10.77.2.2: 10.77.1.2 tcp/22" in k.served.log()


def test_printed_ping_command_opens(knocking: Knocking) -> None:
    k = knocking
    k.closed_before()
    command = client(k, "--via", "icmp").split()
    assert command[:4] == ["ping", "-c", "2", "-p"] and command[5:] == [SERVER]
    k.world.alice.run(command, check=False, timeout=10)
    assert k.opens(), k.served.log()
    k.only_alice()
    assert "accepted alice via icmp: 10.77.1.2 tcp/22" in k.served.log()


def test_stale_knocks_open_nothing(knocking: Knocking) -> None:
    k = knocking
    stale = str(int(time.time()) - 600)
    client(k, "--at", stale)
    client(k, "--at", stale, "--via", "dns", "--dns-server", SERVER)
    assert wait_until(lambda: k.served.log().count("outside time window") >= 2, 3), k.served.log()
    time.sleep(0.3)
    assert k.probe() == "refused"
    assert "accepted" not in k.served.log()
