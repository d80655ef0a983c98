"""``spa demo``, the README's first command: it succeeds, shows its table, and leaves nothing."""

from __future__ import annotations

import glob
import signal
import subprocess
import sys
import time

import pytest
from world import need_netns

from spa.demo.netns import NETNS_ETC, run

pytestmark = pytest.mark.netns


def _namespaces() -> set[str]:
    return set(run(["ip", "netns", "list"]).stdout.split())


def test_spa_demo_knocks_by_every_carrier_and_cleans_up() -> None:
    need_netns("unbound", "sshd", "ssh", "ssh-keygen", "nft", "dig", "nslookup", "ping", "knock",
               libraries=("nftables",))
    before = _namespaces()
    etc_before = set(NETNS_ETC.iterdir()) if NETNS_ETC.exists() else set()
    result = subprocess.run([sys.executable, "-m", "spa", "demo"], capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    table = result.stdout.split("knock->open", 1)[1]
    for carrier in ("DNS via Unbound", "ICMP ping -p", "UDP SPA", "fixed sequence", "one-time sequence",
                    "TOTP via DNS", "TOTP via ping", "UDP, single use, NAT"):
        row = next(line for line in table.splitlines() if line.startswith(carrier))
        assert "ssh ok" in row and " ms" in row, row
    assert "nslookup " in table and "ping -c 1" in table and "knock -d" in table
    # Compared as "nothing new": other runs on the machine may remove their own meanwhile.
    assert not _namespaces() - before, "spa demo left namespaces behind"
    assert not (set(NETNS_ETC.iterdir()) if NETNS_ETC.exists() else set()) - etc_before


def test_ctrl_c_during_the_demo_leaves_nothing() -> None:
    need_netns("unbound", "sshd", "ssh", "ssh-keygen", "nft", "dig", "nslookup", "ping", "knock",
               libraries=("nftables",))
    before, dirs_before = _namespaces(), set(glob.glob("/tmp/spa-world-*"))
    demo = subprocess.Popen([sys.executable, "-m", "spa", "demo"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert demo.stdout is not None
        seen = ""
        deadline = time.monotonic() + 60
        while "DNS via Unbound" not in seen and time.monotonic() < deadline:  # mid-run: spa serving
            seen += demo.stdout.readline()
        demo.send_signal(signal.SIGINT)
        demo.wait(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 130, seen
    assert not _namespaces() - before, "Ctrl-C left namespaces behind"
    assert not set(glob.glob("/tmp/spa-world-*")) - dirs_before, "Ctrl-C left the world's files behind"
