"""Issue 6's scenarios in the miniature internet (spa.demo), with real ssh.

One world per module (building it takes seconds); the tests run in file
order and each waits until the previous grant has expired. Every knock is
the one ``spa demo`` shows, so the demo and the suite cannot disagree.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from world import need_netns
from world.daemon import remove

from spa.demo.internet import PUBLIC_NAT, SERVER, Internet
from spa.demo.netns import wait_until
from spa.demo.scenarios import SSH_PORT, Stage, format_table, scenarios, stage

pytestmark = pytest.mark.netns

NAMES = ["dns_via_resolver", "ping", "udp", "fixed_sequence", "one_time_sequence", "totp_dns", "totp_ping",
         "nat_single_use"]


@pytest.fixture(scope="module")
def staged() -> Iterator[Stage]:
    need_netns("unbound", "sshd", "ssh", "ssh-keygen", "nft", "dig", "nslookup", "ping", "knock", "tcpdump",
               libraries=("nftables",))
    world = Internet()
    try:
        world.build()
        ready = stage(world)
        yield ready
        ready.served.stop()
        remove(ready.served)  # fails the module if spa serve contained an unexpected exception
    finally:
        world.close()


def test_ssh_is_refused_before_any_knock(staged: Stage) -> None:
    # stealth = "closed": the guard answers RST, as a port without sshd would,
    # so ssh fails at once with "Connection refused" instead of timing out.
    result = staged.world.run(staged.world.c, [*staged.world.ssh_argv(staged.access, connect_timeout=2),
                                               "echo", "in"], timeout=20)
    assert result.returncode != 0 and "in" not in result.stdout.split(), "ssh got in without a knock"
    assert "Connection refused" in result.stderr, result.stderr


@pytest.mark.parametrize("name", NAMES)
def test_each_carrier_opens_and_ssh_runs_a_command(staged: Stage, name: str) -> None:
    scenario = dict(zip(NAMES, scenarios(staged), strict=True))[name]
    result = scenario()
    assert result.opened and result.logged_in, format_table([result]) + staged.served.log()


def test_normal_grant_behind_nat_lets_the_neighbour_in_too(staged: Stage) -> None:
    """What docs/world.md says: a normal grant opens the NAT's public address,
    so B can connect after A's knock. Single-use grants (alice) avoid that."""
    w = staged.world
    assert staged.closed(w.a) and staged.closed(w.b) and staged.closed(w.c)
    staged.spa(w.b, "knock", "--key", staged.key("bob"), "--ip", PUBLIC_NAT, SERVER)
    assert w.probe(w.a, SSH_PORT) == "open", "the NAT's other client could not use bob's grant"
    assert w.probe(w.c, SSH_PORT) == "refused"


def test_a_captured_knock_replayed_from_another_host_opens_nothing(staged: Stage) -> None:
    """C captures nothing itself: the capture is taken on the server (tcpdump),
    as an on-path eavesdropper would. C then re-sends A's knock with scapy."""
    w = staged.world
    capture = Path(staged.served.directory) / "knock.pcap"
    tcpdump = w.popen(w.server, ["tcpdump", "-i", "any", "-U", "-w", str(capture), "udp", "port", "62201"])
    assert wait_until(lambda: capture.exists() and capture.stat().st_size > 0, 5), "tcpdump did not start"
    assert staged.closed(w.a) and staged.closed(w.c)
    staged.spa(w.a, "knock", "--key", staged.key("bob"), "--ip", PUBLIC_NAT, SERVER)  # A's knock opens the NAT
    assert wait_until(lambda: capture.stat().st_size > 100, 5)
    w.spaces.kill(tcpdump)
    granted = staged.served.log().count("accepted")
    script = (
        "import sys; from scapy.all import rdpcap, IP, UDP, Raw, send\n"
        "payload = next(bytes(p[UDP].payload) for p in rdpcap(sys.argv[1]) if UDP in p)\n"
        f"send(IP(dst='{SERVER}')/UDP(sport=40000, dport=62201)/Raw(payload), verbose=False)\n"
    )
    for _ in range(2):  # at once (a repeat of A's knock), and once more
        w.run(w.c, [sys.executable, "-c", script, str(capture)], timeout=30)
    time.sleep(0.5)
    assert w.probe(w.c, SSH_PORT) == "refused", "a replayed knock opened the port for the replayer"
    assert staged.served.log().count("accepted") == granted, "a replayed knock earned a second grant"


def test_closed_after_expiry_while_an_established_session_survives(staged: Stage) -> None:
    w = staged.world
    assert staged.closed(w.c)
    staged.spa(w.c, "knock", "--key", staged.key("carol"), SERVER)  # a 3-second grant
    session = subprocess.Popen(
        w.c.exec_argv([*w.ssh_argv(staged.access), "sleep 6; echo survived"]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    w.adopt(session)
    time.sleep(4.5)
    assert w.probe(w.c, SSH_PORT) == "refused", "the grant outlived its 3 seconds"
    out, err = session.communicate(timeout=20)
    assert session.returncode == 0 and out.strip() == "survived", err
