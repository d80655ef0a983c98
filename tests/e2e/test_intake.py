"""The packet intake in a real namespace: exactly the wanted packets, even dropped ones.

A listener (tests/world/listen.py) runs spa.intake.capture.Capture in the
server namespace; alice sends pings with a pattern (IPv4 and IPv6), UDP
datagrams and TCP connection attempts, to wanted and unwanted ports, while
nftables in the server drops all of them: AF_PACKET hears a packet before
netfilter does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from world import World, need_netns
from world.listen import Listener, listen, sender_argv

pytestmark = pytest.mark.netns

PATTERN = bytes.fromhex("5350412d696e74616b652d7465737421")  # 16 bytes, what `ping -p` carries
WANTED = {"icmp_echo": True, "udp": [[62201, 62201], [7000, 7010]], "tcp_syn": [[7005, 7005]]}
ALICE4, ALICE6 = "10.77.1.2", "fd77:1::2"

# Everything alice sends below is dropped on input, wanted or not.
DROP_ALL_KNOCKS = """
table inet spa_intake_test {
    chain input {
        type filter hook input priority -10; policy accept;
        udp dport { 7003, 9999, 62201 } drop
        tcp dport { 2222, 7005 } drop
        icmp type echo-request drop
        icmpv6 type echo-request drop
    }
}
"""


def start(world: World, **options: Any) -> Listener:
    listener = listen(world, world.server, WANTED, lifetime=60, **options)
    assert listener.first is not None, "listener silent"
    assert listener.first.get("ready"), listener.first
    return listener


def summary(found: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    return [(p.get("source", "unparsed"), p.get("protocol", -1), p.get("port", -1)) for p in found]


def ping(world: World, version: int, target: str, client: Any = None) -> int:
    host = client or world.alice
    argv = ["ping", "-c1", "-W1", "-p", PATTERN.hex(), target]
    if version == 6:
        argv.insert(1, "-6")
    return host.run(argv, check=False, timeout=5).returncode


def send(world: World, host: Any, kind: str, target: str, port: int, payload: bytes = b"") -> None:
    host.run(sender_argv(kind, target, port, payload), timeout=10)


def test_exactly_the_wanted_packets_arrive_even_when_nftables_drops_them(world: World, tmp_path: Path) -> None:
    need_netns("nft", "ping")
    ruleset = tmp_path / "drop.nft"
    ruleset.write_text(DROP_ALL_KNOCKS)
    world.server.run(["nft", "-f", str(ruleset)])
    listener = start(world)

    # The drop really happens: no echo reply, no TCP answer.
    assert ping(world, 4, "10.77.1.1") != 0, "the echo request was not dropped"
    assert ping(world, 6, "fd77:1::1") != 0, "the ICMPv6 echo request was not dropped"
    send(world, world.alice, "udp", "10.77.1.1", 62201, b"knock-v4")
    send(world, world.alice, "udp", "10.77.1.1", 9999, b"unwanted")
    send(world, world.alice, "udp", "fd77:1::1", 7003, b"knock-v6")
    send(world, world.alice, "syn", "10.77.1.1", 7005)
    send(world, world.alice, "syn", "10.77.1.1", 2222)

    found = listener.packets(count=5)
    assert summary(found) == [
        (ALICE4, 1, 0), (ALICE6, 58, 0), (ALICE4, 17, 62201), (ALICE6, 17, 7003), (ALICE4, 6, 7005),
    ], found
    ping4, ping6, udp4, udp6, syn = found
    for echo in (ping4, ping6):
        # iputils: a 16-byte timestamp, then the pattern, repeated.
        assert bytes.fromhex(echo["payload"])[16:32] == PATTERN
    assert ping4["destination"] == "10.77.1.1" and ping6["destination"] == "fd77:1::1"
    assert bytes.fromhex(udp4["payload"]) == b"knock-v4"
    assert bytes.fromhex(udp6["payload"]) == b"knock-v6"
    assert syn["flags"] & 0x12 == 0x02 and syn["payload"] == ""


def test_own_outgoing_packets_are_not_read(world: World) -> None:
    """PACKET_IGNORE_OUTGOING: the server's own echo requests and datagrams
    match the filter but leave, so they must not come back as knocks."""
    need_netns("ping")
    listener = start(world)
    assert ping(world, 4, ALICE4, client=world.server) == 0  # alice answers: an echo reply, not wanted
    ping(world, 6, ALICE6, client=world.server)  # the request leaves either way (a fresh link may lose the reply)
    send(world, world.server, "udp", ALICE4, 62201, b"from the server")
    send(world, world.server, "udp", "127.0.0.1", 62201, b"loopback")  # seen once, as it arrives on lo
    found = listener.packets(count=1)
    assert summary(found) == [("127.0.0.1", 17, 62201)], found


def test_one_interface_hears_only_its_link(world: World) -> None:
    need_netns("ping")
    listener = start(world, interfaces=["client1"])  # alice's link, not bob's
    send(world, world.bob, "udp", "10.77.2.1", 62201, b"bob")
    send(world, world.alice, "udp", "10.77.1.1", 62201, b"alice")
    assert ping(world, 4, "10.77.2.1", client=world.bob) == 0
    found = listener.packets(count=1)
    assert summary(found) == [(ALICE4, 17, 62201)], found


def test_a_missing_interface_is_named(world: World) -> None:
    listener = listen(world, world.server, WANTED, interfaces=["client1", "nosuch0"])
    assert listener.first == {"error": "cannot capture on 'nosuch0': no such network interface"}


def test_sockets_keep_working_after_dropping_root(world: World) -> None:
    listener = start(world, drop_after_open=True)
    assert listener.first is not None and listener.first["uid"] == 65534
    send(world, world.alice, "syn", "10.77.1.1", 7005)
    found = listener.packets(count=1)
    assert summary(found) == [(ALICE4, 6, 7005)], found


def test_the_filter_is_locked_even_for_root(world: World) -> None:
    """SO_LOCK_FILTER: whoever holds the socket later (the worker) cannot take
    the filter off or swap it; unwanted packets stay out."""
    listener = start(world, try_unfilter=True)
    assert listener.first is not None
    assert (listener.first["detach"], listener.first["replace"]) == ("EPERM", "EPERM"), listener.first
    send(world, world.alice, "udp", "10.77.1.1", 9999, b"unwanted")
    send(world, world.alice, "udp", "10.77.1.1", 62201, b"wanted")
    found = listener.packets(count=1)
    assert summary(found) == [(ALICE4, 17, 62201)], found


def test_without_cap_net_raw_the_error_says_so(world: World) -> None:
    listener = listen(world, world.server, WANTED, drop_before_open=True)
    assert listener.first == {"error": "capturing packets needs root or CAP_NET_RAW"}



def test_frames_for_other_hosts_are_not_heard_in_promiscuous_mode(world: World) -> None:
    """With the link promiscuous (say, tcpdump runs), the server's NIC takes
    every frame on the wire; a knock sent to another machine must not count."""
    world.server.run(["ip", "link", "set", "client1", "promisc", "on"])
    world.alice.run(["ip", "neigh", "replace", "10.77.1.99", "lladdr", "02:00:00:00:00:99", "dev", "uplink"])
    listener = start(world)
    send(world, world.alice, "udp", "10.77.1.99", 62201, b"for someone else")
    send(world, world.alice, "udp", "10.77.1.1", 62201, b"for the server")
    found = listener.packets(count=1)
    assert [bytes.fromhex(p["payload"]) for p in found] == [b"for the server"], found
