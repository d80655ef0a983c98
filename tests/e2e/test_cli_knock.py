"""``spa knock`` and ``spa connect`` from alice's namespace against ``spa serve``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from world import World, need_netns
from world.daemon import Served, make_served, remove
from world.knocking import SERVER, prepare

pytestmark = pytest.mark.netns


@pytest.fixture
def served(request: pytest.FixtureRequest) -> tuple[World, Served]:
    need_netns("nft", "ping", libraries=("nftables",))
    knocking = prepare(request)
    knocking.served.start()
    return knocking.world, knocking.served


def spa_in_alice(world: World, served: Served, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    key = str(served.directory / "alice.spakey")
    return subprocess.run(
        world.alice.exec_argv([sys.executable, "-m", "spa", *argv, "--key", key]),
        capture_output=True, text=True, timeout=30, input=stdin, check=False,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )


@pytest.mark.parametrize("via", ["udp", "icmp", "sequence"])
def test_knock_waits_until_the_port_is_open(served: tuple[World, Served], via: str) -> None:
    world, daemon = served
    result = spa_in_alice(world, daemon, "knock", "--via", via, SERVER)
    assert result.returncode == 0, result.stderr + daemon.log()
    assert result.stdout.startswith("tcp/22 on 10.77.1.1 is open (")
    assert f"accepted alice via {via}" in daemon.log()


def test_knock_by_dns_direct(served: tuple[World, Served]) -> None:
    world, daemon = served
    result = spa_in_alice(world, daemon, "knock", "--via", "dns", "--dns-server", SERVER, SERVER)
    assert result.returncode == 0, result.stderr + daemon.log()
    assert "accepted alice via dns: 10.77.1.2" in daemon.log()


def test_knock_that_never_opens_says_so(served: tuple[World, Served]) -> None:
    world, daemon = served
    # Naming bob's address: the grant goes to bob, so alice's port never opens.
    result = spa_in_alice(world, daemon, "knock", "--ip", "10.77.2.2", "--wait", "1", SERVER)
    assert result.returncode == 1
    assert "did not open within 1 s" in result.stderr and "Traceback" not in result.stderr


def test_connect_relays_a_session(served: tuple[World, Served]) -> None:
    world, daemon = served
    result = spa_in_alice(world, daemon, "connect", SERVER, "22", stdin="hello through the knock\n")
    assert result.returncode == 0, result.stderr + daemon.log()
    assert result.stdout == "hello through the knock\n"  # the echo service answered


def test_errors_are_one_line(served: tuple[World, Served]) -> None:
    world, daemon = served
    os.chmod(daemon.directory / "alice.spakey", 0o640)
    result = spa_in_alice(world, daemon, "knock", SERVER)
    assert result.returncode == 1 and "chmod 600" in result.stderr and "Traceback" not in result.stderr
    os.chmod(daemon.directory / "alice.spakey", 0o600)
    result = spa_in_alice(world, daemon, "knock", "no-such-host.invalid")
    assert result.returncode == 1 and "unknown server" in result.stderr


def test_ip_auto_learns_the_address_from_a_real_stun_server(served: tuple[World, Served]) -> None:
    world, daemon = served
    need_netns("turnserver")
    turn = world.popen(world.server, [
        "turnserver", "-n", "--listening-ip=10.77.1.1", "--listening-port=3478", "--stun-only",
        "--no-cli", "--no-tls", "--no-dtls", "-b", str(daemon.directory / "turndb"), "--log-file=stdout",
    ])
    assert turn.pid > 0
    result = None
    for _ in range(20):  # coturn needs a moment to listen; bounded
        result = spa_in_alice(world, daemon, "knock", "--ip", "auto", "--stun-server", "10.77.1.1:3478",
                              "--wait", "2", SERVER)
        if result.returncode == 0 or "STUN" not in result.stderr:
            break
    assert result is not None and result.returncode == 0, result.stderr + daemon.log()
    assert "accepted alice via udp: 10.77.1.2 tcp/22" in daemon.log()
    # And --ip auto really depends on STUN: with no server answering, no knock is sent.
    silent = spa_in_alice(world, daemon, "knock", "--ip", "auto", "--stun-server", "10.77.1.1:3479", SERVER)
    assert silent.returncode == 1 and "could not learn the public address by STUN" in silent.stderr


def _sshd(world: World, base: Path) -> tuple[str, str]:
    """A real sshd on the server's port 22 with a fresh host key; returns (client key, known_hosts)."""
    for name in ("host", "user"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / name)], check=True, timeout=30)
    (base / "authorized_keys").write_text((base / "user.pub").read_text())
    config = base / "sshd_config"
    config.write_text(
        f"Port 22\nListenAddress 10.77.1.1\nHostKey {base / 'host'}\nAuthorizedKeysFile {base / 'authorized_keys'}\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "UsePAM no\nStrictModes no\nPidFile none\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    sshd = world.popen(world.server, [shutil.which("sshd") or "/usr/sbin/sshd", "-D", "-e", "-f", str(config)])
    assert sshd.pid > 0
    known = base / "known_hosts"
    known.write_text(f"10.77.1.1 {(base / 'host.pub').read_text()}")
    return str(base / "user"), str(known)


def test_ssh_through_spa_connect_as_proxy_command(request: pytest.FixtureRequest) -> None:
    need_netns("nft", "ssh", "sshd", "ssh-keygen", libraries=("nftables",))
    world = World()
    request.addfinalizer(world.close)
    world.build()
    world.echo_server(2222)
    daemon = make_served(world)
    request.addfinalizer(lambda: remove(daemon))
    daemon.keygen("alice")
    daemon.start()
    user_key, known_hosts = _sshd(world, daemon.directory)
    proxy = f"{sys.executable} -m spa connect --key {daemon.directory / 'alice.spakey'} %h %p"
    argv = ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-i", user_key]  # ssh keeps the first value of an option
    blocked = world.alice.run([*argv, "-o", "ConnectTimeout=2", "root@10.77.1.1", "echo", "hello"],
                              check=False, timeout=30)
    assert blocked.returncode != 0, "ssh got in without a knock"
    result = world.alice.run([*argv, "-o", "ConnectTimeout=10", "-o", f"ProxyCommand={proxy}", "root@10.77.1.1", "echo", "through-spa"],
                             check=False, timeout=30)
    assert result.returncode == 0, result.stderr + daemon.log()
    assert result.stdout.strip() == "through-spa"
    assert "accepted alice via udp: 10.77.1.2 tcp/22" in daemon.log()
