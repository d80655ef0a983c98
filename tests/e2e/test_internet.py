"""The miniature internet of spa.demo.internet: it builds, it works like the real one, it leaves nothing.

- Built and closed (also half-built, also by Ctrl-C), no namespace, no
  /etc/netns entry, no process and no file of it remains.
- DNS is real: Unbound finds example.test's server by stub-zone and the knock
  zone by the parent's referral, minimising the QNAME and randomising its case.
- A and B behind the NAT router both arrive as 198.51.100.2.
- sshd on the server takes root's key from C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from world import need_netns
from world.daemon import alive

from spa.demo.internet import (
    CLIENT_A,
    PARENT,
    PARENT_ZONE,
    PUBLIC_C,
    PUBLIC_NAT,
    SERVER,
    SERVER6,
    ZONE,
    ZONE_NS,
    Internet,
)
from spa.demo.netns import NETNS_ETC, run, wait_until

pytestmark = pytest.mark.netns


def need_tools() -> None:
    need_netns("unbound", "sshd", "ssh", "ssh-keygen", "nft", "dig")


@pytest.fixture
def internet(request: pytest.FixtureRequest) -> Internet:
    need_tools()
    world = Internet()
    request.addfinalizer(world.close)
    world.build()
    return world


def leftovers(tag: str) -> list[str]:
    """Namespaces and /etc/netns entries whose names carry ``tag``."""
    names = run(["ip", "netns", "list"]).stdout.split()
    found = [name for name in names if name.startswith(f"{tag}-")]
    if NETNS_ETC.exists():
        found += [str(path) for path in NETNS_ETC.iterdir() if path.name.startswith(f"{tag}-")]
    return found




def test_builds_runs_and_closes_leaving_nothing() -> None:
    need_tools()
    world = Internet()
    try:
        world.build()
        world.start_parent_dns()
        world.start_resolver()
        world.start_echo(7)
        world.start_sshd()
        assert world.probe("c", 7) == "open"
        tag, directory = world.spaces.tag, world.directory
        assert directory is not None and directory.is_dir()
        assert len(leftovers(tag)) == 8 + 3  # every namespace; resolv.conf for a, b and c
        assert (NETNS_ETC / world.a.netns / "resolv.conf").read_text().startswith("nameserver 192.0.2.53\n")
        pids = [process.pid for process in world.spaces.processes]
        for host in world.hosts.values():
            pids += [int(word) for word in run(["ip", "netns", "pids", host.netns]).stdout.split()]
        assert len(set(pids)) >= 5  # parent DNS, unbound, echo, sshd, C's prober
    finally:
        world.close()
    world.close()  # twice is fine
    assert leftovers(tag) == []
    assert wait_until(lambda: not any(alive(pid) for pid in pids), 5), [pid for pid in pids if alive(pid)]
    assert not directory.exists()


class Interrupted(Internet):
    """A build that a Ctrl-C cuts short half-way (after the router's uplink is addressed)."""

    def _address(self, host: object, device: str, prefix: str, gateway: str | None = None) -> None:
        if prefix.startswith(PUBLIC_NAT):
            raise KeyboardInterrupt
        super()._address(host, device, prefix, gateway)  # type: ignore[arg-type]


def test_interrupted_build_leaves_nothing() -> None:
    need_tools()
    world = Interrupted()
    with pytest.raises(KeyboardInterrupt), world:
        pytest.fail("the build should have been interrupted")
    assert world.spaces.made == [] and leftovers(world.spaces.tag) == []


CTRL_C = """
import sys, time
from spa.demo.internet import Internet
world = Internet()
with world:
    world.start_parent_dns()
    world.start_resolver()
    world.start_echo(7)
    print(world.spaces.tag, world.directory, *(p.pid for p in world.spaces.processes), flush=True)
    time.sleep(60)
"""


def test_ctrl_c_removes_everything() -> None:
    """SIGINT to a program holding a world with services running: it stops, and takes all of it along."""
    need_tools()
    program = subprocess.Popen([sys.executable, "-c", CTRL_C], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        assert program.stdout is not None
        line = program.stdout.readline().split()
        assert line, program.communicate(timeout=10)[1]
        tag, directory, pids = line[0], Path(line[1]), [int(word) for word in line[2:]]
        assert len(leftovers(tag)) == 11 and all(alive(pid) for pid in pids)
        os.kill(program.pid, signal.SIGINT)
        _, stderr = program.communicate(timeout=15)
    finally:
        if program.poll() is None:
            os.kill(program.pid, signal.SIGKILL)
            program.wait(timeout=10)
    assert program.returncode != 0 and "KeyboardInterrupt" in stderr
    assert leftovers(tag) == []
    assert not directory.exists()
    assert wait_until(lambda: not any(alive(pid) for pid in pids), 5)


def dig(world: Internet, client: str, *argv: str) -> str:
    result = world.run(client, ["dig", "+tries=1", "+time=5", *argv], timeout=15)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_dns_reaches_the_knock_zone_by_delegation(internet: Internet) -> None:
    internet.start_parent_dns()
    internet.start_resolver()
    # A stand-in for spa's DNS on the server: NOERROR/NODATA with the knock zone's SOA for every name.
    assert internet.directory is not None
    stand_in_log = internet.directory / "stand-in.log"
    stand_in = internet.popen(internet.server, [
        sys.executable, "-m", "spa.demo.parent_dns", "--listen", SERVER, "--zone", ZONE,
        "--ns", ZONE_NS, SERVER, "--ttl", "1", "--empty-names",
    ], stand_in_log)
    assert wait_until(lambda: stand_in_log.exists() and "ready" in stand_in_log.read_text(), 10), stand_in.poll()

    answer = dig(internet, "c", PARENT_ZONE, "SOA")
    assert "status: NOERROR" in answer and "SERVER: 192.0.2.53#53" in answer
    assert f"{PARENT_ZONE}.\t" in answer and "ns1.example.test. hostmaster.example.test." in answer

    assert "status: REFUSED" in dig(internet, "c", "example.com")  # nothing outside the world is looked up

    labels = ["firsttokenlabelabcdefgh", "secondtokenlabelijklmnop", "thirdtokenlabelqrstuvwx"]
    for label in labels:
        answer = dig(internet, "a", f"{label}.{ZONE}")
        assert "status: NOERROR" in answer and "ANSWER: 0" in answer
        assert f"{ZONE}.\t" in answer and "SOA\tns1.knock.example.test." in answer

    seen = [line.split()[3] for line in stand_in_log.read_text().splitlines() if line.startswith("query ")]
    for label in labels:  # every token name reached the server, each from the resolver
        assert any(name.lower() == f"{label}.{ZONE}" for name in seen), seen
    assert all("query 192.0.2.53 " in line for line in stand_in_log.read_text().splitlines()
               if line.startswith("query "))
    assert any(name != name.lower() for name in seen), f"no 0x20 case randomisation: {seen}"

    parent_log = (internet.directory / "parent_dns.log").read_text().lower()
    assert f"{ZONE} a -> referral to {ZONE_NS}" in parent_log  # the referral, asked minimised...
    assert not any(label in parent_log for label in labels), parent_log  # ...so the parent never sees a token


def test_nat_clients_share_one_public_address(internet: Internet) -> None:
    on_server = internet.start_echo(7)
    on_c = internet.start_echo(7, host="c")
    for client in ("a", "b"):
        assert internet.probe(client, 7) == "open"
        assert internet.probe(client, 7, address=PUBLIC_C) == "open"
    assert internet.probe("c", 7) == "open"
    assert internet.probe("c", 7, address=SERVER6) == "open"
    # The handshake completes before the service accepts and logs: wait (bounded) for the log.
    server_saw = [PUBLIC_NAT, PUBLIC_NAT, PUBLIC_C, internet.c.address6]
    assert wait_until(lambda: on_server.peers() == server_saw, 3), on_server.peers()
    assert wait_until(lambda: on_c.peers() == [PUBLIC_NAT, PUBLIC_NAT], 3), on_c.peers()
    assert internet.probe("c", 7, address=CLIENT_A) == "unreachable"  # private: no route from outside
    assert internet.probe("server", 7, address=PARENT) == "refused"  # nothing listens there: RST


def test_sshd_takes_roots_key(internet: Internet) -> None:
    access = internet.start_sshd()
    result = internet.run("c", [*internet.ssh_argv(access), "echo", "ok"], timeout=20)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"
    assert access.key.stat().st_mode & 0o077 == 0
