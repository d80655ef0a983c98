"""``spa serve`` under faults: tampered rules, no libnftables, stopped and
killed processes, a full or read-only state directory, a stepped clock.

Each test runs the real daemon in the namespace world and knocks it with
ping (tests/world/knocking.py). The claim everywhere: no port is open past
its grant, and when spa cannot be sure of that it refuses, and says why.
Related tests elsewhere (not repeated here):
tests/e2e/test_firewall_nftables.py::test_sigkill_never_leaves_the_port_open
(the owned grant table vs. SIGKILL, without the daemon),
tests/unit/test_gate.py::test_unwritable_ledger_refuses_the_knock,
tests/unit/test_gate.py::test_clock_stepped_back_after_pruning_cannot_revive_a_token,
tests/e2e/test_serve.py::test_reload_adds_a_key_and_refuses_a_broken_config.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import ipaddress
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from world import World, need, need_netns
from world.daemon import make_served, remove
from world.knocking import SERVER, Knocking, prepare
from world.netns import wait_until

from spa.client import tokens

pytestmark = pytest.mark.netns

ALICE = ipaddress.ip_address("10.77.1.2")
GRANT = 3  # seconds: make_served's grant length


@pytest.fixture
def prepared(request: pytest.FixtureRequest) -> Knocking:
    need_netns("nft", "ping", libraries=("nftables",))
    return prepare(request)


@pytest.fixture
def knocking(prepared: Knocking) -> Knocking:
    prepared.served.start()
    return prepared


def knock(k: Knocking, at: int | None = None, source: str = "alice") -> str:
    """Ping alice's token (for ``at``, default now) from ``source``; returns the pattern."""
    pattern = tokens.ping_pattern(tokens.compact_token(k.key, int(time.time()) if at is None else at, ALICE))
    resend(k, pattern, source)
    return pattern


def resend(k: Knocking, pattern: str, source: str = "alice") -> None:
    host, target = (k.world.alice, SERVER) if source == "alice" else (k.world.bob, "10.77.2.1")
    host.run(["ping", "-c", "1", "-W", "1", "-p", pattern, target], check=False, timeout=30)


def closes(k: Knocking, timeout: float = GRANT + 3.0) -> bool:
    return wait_until(lambda: k.probe() == "refused", timeout, interval=0.1)


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody has reaped yet (the
    container's init may not reap orphans)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def tables(k: Knocking) -> str:
    return k.world.server.run(["nft", "list", "tables"]).stdout


# -- someone else deletes or changes spa's rules --------------------------------


def test_deleted_or_flushed_guard_is_put_back_and_knocks_still_work(knocking: Knocking) -> None:
    k = knocking
    k.closed_before()
    k.world.server.run(["nft", "delete", "table", "inet", "spa_guard"])
    assert k.served.wait_log("restored spa's firewall rules", 5), k.served.log()
    assert "removed or changed by someone else: the guard table inet spa_guard is missing" in k.served.log()
    assert k.probe() == "refused"

    k.world.server.run(["nft", "flush", "chain", "inet", "spa_guard", "input"])
    assert wait_until(lambda: k.served.log().count("restored spa's firewall rules") == 2, 5), k.served.log()
    assert "the guard table inet spa_guard was changed" in k.served.log()
    assert k.probe() == "refused"

    # A flushed ruleset takes the guard; the grant table is owned by spa's
    # socket and survives, so its grants do too.
    k.world.server.run(["nft", "flush", "ruleset"])
    assert wait_until(lambda: k.served.log().count("restored spa's firewall rules") == 3, 5), k.served.log()
    assert "grant chain" not in k.served.log() and "grants live until now were lost" not in k.served.log()
    assert k.probe() == "refused"

    knock(k)
    assert k.opens(), k.served.log()
    # A guard put back under a live grant keeps the grant (it lives in the other table).
    k.world.server.run(["nft", "delete", "table", "inet", "spa_guard"])
    assert wait_until(lambda: k.served.log().count("restored spa's firewall rules") == 4, 5), k.served.log()
    assert k.probe() == "open", "the restored guard ended a live grant"
    k.only_alice()
    assert k.served.process is not None and k.served.process.poll() is None


SQUAT = """
import sys
from spa.firewall.libnft import Nft
nft = Nft()
# One transaction: spa's guard goes and an owned table of the same name takes
# its place, which spa's own socket is then not allowed to replace.
nft.run("delete table inet spa_guard\\ntable inet spa_guard { flags owner; }\\n")
print("ready", flush=True)
sys.stdin.read()
"""


def test_a_guard_that_cannot_be_put_back_stops_spa(knocking: Knocking) -> None:
    k = knocking
    squatter = k.world.popen(k.world.server, [sys.executable, "-c", SQUAT])
    assert squatter.stdout is not None and squatter.stdout.readline().strip() == "ready"
    process = k.served.process
    assert process is not None
    assert wait_until(lambda: process.poll() is not None, 10), k.served.log()
    assert process.returncode == 3
    assert "stopping rather than serve with the ports unguarded" in k.served.log()
    assert "Operation not permitted" in k.served.log()
    assert "spa_grant" not in tables(k)  # no grant survives the stop


def test_iptables_guard_flushed_or_unhooked_is_put_back(world: World, request: pytest.FixtureRequest) -> None:
    need_netns("iptables", "ip6tables", "ipset", "ping")
    world.echo_server(22, 2222)
    served = make_served(world, backend="iptables")
    request.addfinalizer(lambda: remove(served))
    served.keygen("alice")
    k = Knocking(world, served)
    served.start()
    k.closed_before()
    world.server.run(["iptables", "-w", "-F", "spa_guard"])
    assert served.wait_log("restored spa's firewall rules", 5), served.log()
    assert "iptables chain spa_guard was changed" in served.log()
    assert k.probe() == "refused"
    world.server.run(["ip6tables", "-w", "-D", "INPUT", "-j", "spa_guard"])
    assert wait_until(lambda: served.log().count("restored spa's firewall rules") == 2, 5), served.log()
    assert "ip6tables INPUT has 0 jumps to spa_guard (want 1)" in served.log()
    knock(k)
    assert k.opens(), served.log()
    k.only_alice()


def test_nftables_changes_are_heard_as_they_happen(world: World) -> None:
    """The notification socket the supervisor listens on, in the server's namespace."""
    need_netns("nft")
    script = (
        "import subprocess, sys, time\n"
        "from spa.firewall.watch import NftWatch\n"
        "watch = NftWatch()\n"
        "assert not watch.drain(), 'heard something before any change'\n"
        "subprocess.run(['nft', 'add', 'table', 'inet', 'spa_watch_probe'], check=True)\n"
        "deadline = time.monotonic() + 5\n"
        "while not watch.drain() and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        "print('heard' if time.monotonic() < deadline else 'silent')\n"
    )
    assert world.server.run([sys.executable, "-c", script]).stdout.strip() == "heard"


# -- no libnftables --------------------------------------------------------------


def libnftables_path() -> str:
    """The file libnftables.so.1 resolves to (read from this process's own map)."""
    ctypes.CDLL("libnftables.so.1")
    for line in Path("/proc/self/maps").read_text().splitlines():
        if "libnftables.so" in line:
            return line.split()[-1]
    raise AssertionError("libnftables is loaded but not in /proc/self/maps")


HIDE_AND_RUN = (
    "import os, subprocess, sys\n"
    "subprocess.run(['mount', '--bind', '/dev/null', sys.argv[1]], check=True)\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'spa', *sys.argv[2:]])\n"
)


def test_without_libnftables_serve_and_install_refuse_in_one_line(prepared: Knocking) -> None:
    """libnftables made unloadable for spa alone: /dev/null bind-mounted over
    the library in a private mount namespace (``unshare -m``)."""
    need_netns("unshare", "mount")
    k = prepared
    library = libnftables_path()
    for verb in (["serve", "--config", str(k.served.config)],
                 ["firewall", "install", "--config", str(k.served.config)]):
        argv = k.world.server.exec_argv(["unshare", "-m", sys.executable, "-c", HIDE_AND_RUN, library, *verb])
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        assert result.returncode == 1, (verb, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("spa: libnftables not found"), result.stderr
        assert "spa_" not in tables(k), "something was installed without libnftables"
    assert k.probe() == "open", "the world's echo server should answer while no spa guards it"


# -- SIGSTOP and SIGKILL mid-grant ---------------------------------------------------


def test_stopped_supervisor_or_worker_cannot_hold_a_port_open(knocking: Knocking) -> None:
    k = knocking
    for name, pid in (("supervisor", k.served.process.pid), ("worker", k.served.worker_pid())):  # type: ignore[union-attr]
        knock(k)
        assert k.opens(), (name, k.served.log())
        os.kill(pid, signal.SIGSTOP)
        try:
            assert closes(k), f"the port stayed open with the {name} stopped"
        finally:
            os.kill(pid, signal.SIGCONT)
        knock(k, int(time.time()) + 1)  # a token of its own: the last one is in the ledger
        assert k.opens(), (f"spa did not carry on after SIGCONT to the {name}", k.served.log())


@pytest.mark.parametrize("owner", [True, False], ids=["owned", "not-owned"])
def test_killed_supervisor_restarts_with_the_guard_and_the_replay_state(prepared: Knocking, owner: bool) -> None:
    """30-second grants here, so the grant is surely live at every step. Owned
    grant table: the grant ends with the killed daemon. Not owned: the kernel
    keeps it until its timeout or until the restarted spa recreates the table."""
    k = prepared
    k.served.edit("seconds = 3 ", "seconds = 30 ")
    if not owner:
        k.served.edit('backend = "nftables"', 'backend = "nftables"\nowner = false')
    k.served.start()
    worker = k.served.worker_pid()
    pattern = knock(k)
    assert k.opens()
    k.served.signal(signal.SIGKILL)
    assert k.served.process is not None and k.served.process.wait(5) == -signal.SIGKILL
    # The worker gets SIGTERM from the kernel when its supervisor dies. (The
    # kernel forgets that request when the worker drops root, so it is made
    # again after; without it an orphan went on answering DNS and holding the
    # sockets until its next write to the dead pipe, up to 5 s later.)
    assert wait_until(lambda: gone(worker), 2.5), "the worker outlived its supervisor"
    assert "spa_guard" in tables(k)
    if owner:
        assert "spa_grant" not in tables(k)
        assert k.probe() == "refused", "the grant outlived the killed daemon"
    else:
        assert "spa_grant" in tables(k)
        assert k.probe() == "open", "a grant the kernel holds ended early"  # until its 30 s are up

    k.served.log_path.rename(k.served.log_path.with_suffix(".before-kill"))
    k.served.start()
    assert "spa_grant" in tables(k) and "spa_guard" in tables(k)
    assert k.probe() == "refused", "a grant from before the kill survived the restart"
    resend(k, pattern)  # the same knock again, from alice and from bob
    resend(k, pattern, "bob")
    assert k.served.wait_log("replayed token", 5), k.served.log()
    assert k.probe() == "refused" and k.probe(k.bob) == "refused"
    knock(k, int(time.time()) + 1)
    assert k.opens(), k.served.log()


# -- the state directory full or read-only ---------------------------------------------


def fill(directory: Path) -> Path:
    """Write zeros into ``directory`` until the file system is full (bounded)."""
    filler = directory / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for _ in range(4096):  # 4096 x 4 KiB: far more than the test's tmpfs
            try:
                os.write(descriptor, bytes(4096))
            except OSError as problem:
                assert problem.errno == errno.ENOSPC
                return filler
    finally:
        os.close(descriptor)
    raise AssertionError("the state directory never filled up")


def test_full_or_read_only_state_directory_refuses_knocks_and_says_why(
        prepared: Knocking, request: pytest.FixtureRequest) -> None:
    need_netns("mount", "umount")
    k = prepared
    state = k.served.directory / "state"
    state.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "spa-faults", str(state)], check=True)
    request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(state)], check=False))
    k.served.start()

    filler = fill(state)
    knock(k)
    assert k.served.wait_log("replay state not writable (", 5), k.served.log()
    assert "No space left on device" in k.served.log()
    assert k.probe() == "refused"
    assert "accepted" not in k.served.log()

    filler.unlink()
    knock(k, int(time.time()) + 1)
    assert k.opens(), k.served.log()

    # The kernel will not make a file system read-only under a file open for
    # writing, so the ledger cannot turn read-only under a running spa ...
    remount = subprocess.run(["mount", "-o", "remount,ro", str(state)], capture_output=True, text=True, check=False)
    assert remount.returncode != 0 and "busy" in remount.stderr, remount.stderr
    # ... and a spa started on a read-only one refuses to start.
    assert k.served.stop() == 0
    subprocess.run(["mount", "-o", "remount,ro", str(state)], check=True)
    result = subprocess.run(k.world.server.exec_argv([sys.executable, "-m", "spa", "serve", "--config", str(k.served.config)]),
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"spa: {state}: cannot keep replay state there: Read-only file system"), result.stderr


# -- the clock steps -------------------------------------------------------------------------


def faketime_library() -> str:
    found = glob.glob("/usr/lib/*/faketime/libfaketime.so.1") + glob.glob("/usr/lib/faketime/libfaketime.so.1")
    need(bool(found), "needs libfaketime (Debian package faketime)")
    return found[0]


def test_clock_stepped_forward_then_back(prepared: Knocking, request: pytest.FixtureRequest) -> None:
    """spa under libfaketime; the offset file is read on every clock call.

    Forward: honest knocks are refused as out of the window, the step itself
    is logged, and a grant made before it still ends by its kernel timeout.
    Back: a token accepted before the steps, replayed after, is refused.
    """
    k = prepared
    # Outside spa's private directory: the worker, as nobody, reads it too.
    handle, name = tempfile.mkstemp(prefix="spa-faketime-")
    os.close(handle)
    offset = Path(name)
    request.addfinalizer(offset.unlink)
    offset.chmod(0o644)
    offset.write_text("+0\n")
    env = dict(os.environ, LD_PRELOAD=faketime_library(), FAKETIME_TIMESTAMP_FILE=str(offset),
               FAKETIME_NO_CACHE="1", DONT_FAKE_MONOTONIC="1")
    k.served.start(env=env)

    accepted = int(time.time())
    pattern = knock(k, accepted)
    assert k.opens(), k.served.log()
    offset.write_text("+7200\n")
    assert k.served.wait_log("the system clock stepped forward by 7200 s", 5), k.served.log()
    knock(k, int(time.time()) + 1)
    assert k.served.wait_log("outside time window (token time is -7", 5), k.served.log()
    assert closes(k), "the grant made before the step did not end"

    # Back to 40 s after the first knock: inside its 60 s window, so the old
    # token is judged by the ledger (not refused as stale), and past the 30 s
    # in which a repeat would be the same knock. Honest knocks work again.
    offset.write_text(f"{int(accepted + 40 - time.time()):+d}\n")
    assert k.served.wait_log("the system clock stepped back by ", 5), k.served.log()
    resend(k, pattern)
    assert k.served.wait_log("replayed token", 5), k.served.log()
    assert k.probe() == "refused"
    knock(k, int(time.time()) + 2)
    assert k.opens(), k.served.log()
    assert k.served.process is not None and k.served.process.poll() is None
