"""Links that the worker's user plants where the worker writes never lead root astray.

The attacker here is what a subverted worker can do: it holds the directory
descriptor the real worker of a running ``spa serve`` holds (taken from
``/proc/WORKER/fd``) and runs as the worker's user (nobody). It plants
symbolic links and hard links, under every name the supervisor ever used in
that directory, to files this test owns (root, 0644, in a directory of its
own, never real system files). Then spa runs on: status writes every 5 s, a
crashed worker, a knock, a full restart (as systemd's Restart= would do) and
more status writes. Every target must keep its owner, mode and content.

Kernel protections must not hide the bug: ``fs.protected_symlinks`` only
guards sticky world-writable directories (not this one), and where
``fs.protected_hardlinks`` refuses nobody a hard link to a file it cannot
write, the test makes the same link as root: the state a kernel without that
protection would let nobody reach.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from world import need_netns
from world.knocking import Knocking, prepare
from world.netns import wait_until

from spa.client import tokens
from spa.daemon.worker import STATS_EVERY

pytestmark = pytest.mark.netns

ALICE = ipaddress.ip_address("10.77.1.2")
# Every name the supervisor wrote, created or chowned in the worker's directory
# before this fix (status.json and its temporary file, the ledger* entries).
SYMLINKS = ("status.json.tmp", "status.json", "ledger.tmp", "ledger-planted")
HARDLINKS = ("ledger.hard", "status.json.hard")
DAC_OVERRIDE, DAC_READ_SEARCH = 1, 2  # capability numbers (linux/capability.h)

def plant_as(account: pwd.struct_passwd, directory: int, sources: int,
             links: dict[str, tuple[str, str]]) -> dict[str, str]:
    """In a forked child that became ``account`` (no exec: nobody may not run this
    virtualenv's python): plant each link in ``directory`` (a hard link's source
    is named relative to ``sources``), and try to plant one next to it too (in
    the directory above). What happened to each, by name."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
            result = {}
            for name, (kind, target) in links.items():
                try:
                    if kind == "symlink":
                        os.symlink(target, name, dir_fd=directory)
                    else:
                        os.link(target, name, src_dir_fd=sources, dst_dir_fd=directory)
                    result[name] = "planted"
                except OSError as problem:
                    result[name] = problem.strerror or str(problem)
            try:
                above = os.open("..", os.O_PATH | os.O_DIRECTORY, dir_fd=directory)
                os.symlink(links["status.json.tmp"][1], "status.json.tmp", dir_fd=above)
                result["../status.json.tmp"] = "planted"
            except OSError as problem:
                result["../status.json.tmp"] = problem.strerror or str(problem)
            os.write(write, json.dumps(result).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        text = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert status == 0, "the planting child failed"
    return json.loads(text)


@pytest.fixture
def prepared(request: pytest.FixtureRequest) -> Knocking:
    need_netns("nft", "ping", libraries=("nftables",))
    return prepare(request)


def make_targets(request: pytest.FixtureRequest) -> dict[str, Path]:
    """One root-owned 0644 file per link, in a directory nobody may search
    (so a hard link to it needs the kernel's leave, or root)."""
    directory = Path(tempfile.mkdtemp(prefix="spa-targets-"))
    request.addfinalizer(lambda: shutil.rmtree(directory, ignore_errors=True))
    directory.chmod(0o755)  # nobody may name the targets; none is writable by it
    targets = {}
    for name in (*SYMLINKS, *HARDLINKS):
        path = directory / f"target-{name}"
        path.write_text(f"a file {name} must never touch\n")
        path.chmod(0o644)
        targets[name] = path
    return targets


def snapshot(targets: dict[str, Path]) -> dict[str, tuple[int, int, str, bytes]]:
    """Owner, group, mode and content of each target (links not followed)."""
    seen = {}
    for name, path in targets.items():
        info = os.lstat(path)
        seen[name] = (info.st_uid, info.st_gid, stat.filemode(info.st_mode), path.read_bytes())
    return seen


def holds_directories(worker: int) -> list[int]:
    """Descriptors (opened here, as root) of every directory the worker holds open."""
    found = []
    for name in os.listdir(f"/proc/{worker}/fd"):
        try:
            found.append(os.open(f"/proc/{worker}/fd/{name}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        except OSError:
            continue  # not a directory (sockets, the pipe, the ledger)
    return found


def holds_a_directory(worker: int) -> bool:
    """The worker has opened its directory (it does so after the banner is logged)."""
    found = holds_directories(worker)
    for descriptor in found:
        os.close(descriptor)
    return bool(found)


def plant(worker: int, targets: dict[str, Path]) -> list[dict[str, str]]:
    """As nobody, through the worker's own directory descriptors, plant every link."""
    links = {name: ("symlink", str(targets[name])) for name in SYMLINKS}
    links |= {name: ("hardlink", targets[name].name) for name in HARDLINKS}
    nobody = pwd.getpwnam("nobody")
    # A hard link must not cross mounts, and `ip netns exec` gave spa a mount
    # namespace of its own: name the sources through the supervisor's root
    # (the worker has one more of its own, with an empty /proc, but the
    # directories it holds were opened before it made it).
    supervisor = next(int(line.split()[1]) for line in Path(f"/proc/{worker}/status").read_text().splitlines()
                      if line.startswith("PPid:"))
    sources = os.open(f"/proc/{supervisor}/root{targets[HARDLINKS[0]].parent}", os.O_RDONLY | os.O_DIRECTORY)
    results = []
    assert wait_until(lambda: holds_a_directory(worker), 5), f"the worker {worker} holds no directory"
    try:
        for directory in holds_directories(worker):
            try:
                result = plant_as(nobody, directory, sources, links)
                for name in HARDLINKS:
                    if result[name] != "planted":  # fs.protected_hardlinks: make it as root instead
                        os.link(targets[name].name, name, src_dir_fd=sources, dst_dir_fd=directory)
                        result[name] = f"planted by root ({result[name]} for nobody)"
                results.append(result)
            finally:
                os.close(directory)
    finally:
        os.close(sources)
    return results


def status_time(k: Knocking) -> float:
    try:
        return float(json.loads((k.served.directory / "state" / "status.json").read_text())["time"])
    except (OSError, ValueError, KeyError):
        return 0.0


def status_written_after(k: Knocking, moment: float) -> bool:
    return wait_until(lambda: status_time(k) > moment, STATS_EVERY + 5, interval=0.2)


def test_links_planted_by_the_worker_user_leave_every_target_untouched(
        prepared: Knocking, request: pytest.FixtureRequest) -> None:
    k = prepared
    targets = make_targets(request)
    before = snapshot(targets)
    k.served.start()
    planted = plant(k.served.worker_pid(), targets)
    for result in planted:
        assert all(result[name].startswith("planted") for name in (*SYMLINKS, *HARDLINKS)), planted
        assert result["../status.json.tmp"] == "Permission denied", planted
    assert status_written_after(k, time.time()), k.served.log()

    # The worker crashes (a subverted one can do that at will) and is replaced.
    os.kill(k.served.worker_pid(), signal.SIGKILL)
    assert k.served.wait_log("starting a new one", 5), k.served.log()
    pattern = tokens.ping_pattern(tokens.compact_token(k.key, int(time.time()), ALICE))
    k.world.alice.run(["ping", "-c", "1", "-W", "1", "-p", pattern, "10.77.1.1"], check=False, timeout=30)
    assert k.opens(), k.served.log()

    # A full restart: the supervisor prepares its state again, with the links in place.
    assert k.served.stop() == 0
    k.served.start()
    assert status_written_after(k, time.time()), k.served.log()
    assert k.served.stop() == 0

    after = snapshot(targets)
    changed = {name: (before[name], after[name]) for name in targets if before[name] != after[name]}
    assert not changed, f"root changed files through planted links: {changed}\nplanted: {planted}"


def test_the_supervisor_needs_no_right_to_read_or_write_the_workers_files(prepared: Knocking) -> None:
    """Root's side never opens a file of the worker's: spa serves, and restarts on
    its own replay state, without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH."""
    k = prepared
    bounded = dataclasses.replace(k.served, exec_argv=lambda argv: k.world.server.exec_argv(
        ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--", *argv]))
    for run in range(2):  # the second start finds the worker's ledger from the first
        bounded.start()
        supervisor = bounded.process
        assert supervisor is not None
        assert not int(capabilities(supervisor.pid), 16) & (1 << DAC_OVERRIDE | 1 << DAC_READ_SEARCH)
        assert status_written_after(k, time.time()), bounded.log()
        pattern = tokens.ping_pattern(tokens.compact_token(k.key, int(time.time()) + run, ALICE))
        k.world.alice.run(["ping", "-c", "1", "-W", "1", "-p", pattern, "10.77.1.1"], check=False, timeout=30)
        assert k.opens(), bounded.log()
        assert bounded.stop() == 0
    assert "cannot write" not in bounded.log(), bounded.log()


def capabilities(pid: int) -> str:
    """CapEff of ``pid`` (setpriv execs spa in place, so it is spa's)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return line.split()[1]
    raise AssertionError(f"no CapEff for {pid}")


def test_serve_refuses_a_key_store_others_can_write(prepared: Knocking) -> None:
    k = prepared
    keys = k.served.directory / "keys"
    keys.chmod(0o770)
    serve = [sys.executable, "-m", "spa", "serve", "--config", str(k.served.config)]
    result = subprocess.run(k.world.server.exec_argv(serve), capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"spa: {keys}: writable by group or others (mode 0770); spa trusts no config, key or state path "
        f"anyone but root could change (chmod go-w {keys})"], result.stderr
    assert "spa_guard" not in k.world.server.run(["nft", "list", "tables"]).stdout
