"""What root trusts on disk: the state directory's two parts, the StrictModes
check of config, key and state paths, counters from the worker, and writes
by name where others may plant links.

Runs as root (the CI does) where it chowns files to nobody; the attack on a
running ``spa serve`` is tests/e2e/test_state_links.py.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import stat
import time
from pathlib import Path

import pytest

from spa.cli import main
from spa.cli.firewall_cmd import describe_status, format_counters
from spa.core import keys, pathtrust
from spa.daemon import messages, privdrop, statedir
from spa.errors import SpaError

NOBODY = pwd.getpwnam("nobody")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chowns files to nobody")


@pytest.fixture
def server(tmp_path: Path) -> Path:
    directory = tmp_path / "srv"
    assert main(["init", "--dir", str(directory), "--protect", "tcp/22", "--zone", "knock.test",
                 "--backend", "dry-run"]) == 0
    return directory / "spa.toml"


@pytest.fixture
def quiet_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """`spa serve` sets up logging for the process: undo that after the test."""
    for logger in (logging.getLogger(), logging.getLogger("spa.firewall")):
        monkeypatch.setattr(logger, "handlers", list(logger.handlers))
        monkeypatch.setattr(logger, "level", logger.level)


def target(tmp_path: Path, name: str = "target") -> tuple[Path, tuple[int, int, int, bytes]]:
    """A root-owned file no link may lead root to change, and how it looks now."""
    path = tmp_path / name
    path.write_text("must stay as it is\n")
    path.chmod(0o644)
    return path, looks(path)


def looks(path: Path) -> tuple[int, int, int, bytes]:
    info = os.lstat(path)
    return info.st_uid, info.st_gid, info.st_mode, path.read_bytes()


# -- spa init: a private tree, and never in a place others can change ------------------------


def test_init_makes_its_tree_private(server: Path) -> None:
    directory = server.parent
    modes = {p.name: stat.S_IMODE(os.stat(p).st_mode)
             for p in (directory, server, directory / "server.secret", directory / "keys", directory / "state")}
    assert modes == {"srv": 0o700, "spa.toml": 0o600, "server.secret": 0o600, "keys": 0o700, "state": 0o700}


def test_init_refuses_a_directory_others_can_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    assert main(["init", "--dir", str(loose / "srv"), "--protect", "tcp/22", "--backend", "dry-run"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"spa: {loose}: writable by group or others (mode 0777)"), err
    assert not (loose / "srv").exists()


# -- StrictModes: spa check and spa serve refuse the same, in one place ----------------------


def loosen_mode(server: Path, relative: str) -> Path:
    path = server.parent / relative
    path.chmod(stat.S_IMODE(os.stat(path).st_mode) | 0o020)
    return path


def give_to_nobody(server: Path, relative: str) -> Path:
    path = server.parent / relative
    os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
    return path


@needs_root
@pytest.mark.parametrize("loosen, relative, why", [
    (loosen_mode, ".", "writable by group or others (mode 0720)"),
    (loosen_mode, "spa.toml", "writable by group or others (mode 0620)"),
    (loosen_mode, "keys", "writable by group or others (mode 0720)"),
    (give_to_nobody, "keys/alice.toml", f"owned by uid {NOBODY.pw_uid}, not root"),
    (give_to_nobody, "server.secret", f"owned by uid {NOBODY.pw_uid}, not root"),
    (give_to_nobody, "keys", f"owned by uid {NOBODY.pw_uid}, not root"),
    (loosen_mode, "state", "writable by group or others (mode 0720)"),
])
def test_check_and_serve_refuse_paths_others_can_change(
        server: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], quiet_logging: None,
        loosen: object, relative: str, why: str) -> None:
    assert main(["keygen", "alice", "--config", str(server), "--server", "192.0.2.1",
                 "--out", str(tmp_path / "alice.spakey")]) == 0
    culprit = loosen(server, relative)  # type: ignore[operator]
    capsys.readouterr()
    for verb in ("check", "serve"):
        assert main([verb, "--config", str(server)]) == 1, verb
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"spa: {culprit.resolve()}: {why}"), (verb, err)


@needs_root
def test_a_link_on_the_way_is_followed_and_checked(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.mkdir()
    os.chown(loose, NOBODY.pw_uid, NOBODY.pw_gid)
    real = tmp_path / "real"
    real.mkdir()
    (real / "spa.toml").write_text("")
    (tmp_path / "via").symlink_to(loose)
    (loose / "next").symlink_to(real)  # made by root, in nobody's directory
    owners = pathtrust.trusted_owners()
    pathtrust.check(real / "spa.toml", owners)
    with pytest.raises(pathtrust.UntrustedPath, match=f"{loose}: owned by uid {NOBODY.pw_uid}"):
        pathtrust.check(tmp_path / "via" / "next" / "spa.toml", owners)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(pathtrust.UntrustedPath, match="more than 40 symbolic links"):
        pathtrust.check(tmp_path / "loop", owners)


@needs_root
def test_a_sticky_directory_may_be_on_the_way_but_not_its_foreign_entries(tmp_path: Path) -> None:
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    (sticky / "mine").mkdir(mode=0o700)
    owners = pathtrust.trusted_owners()
    pathtrust.check(sticky / "mine" / "spa.toml", owners)
    theirs = sticky / "theirs"
    theirs.symlink_to(sticky / "mine")
    os.chown(theirs, NOBODY.pw_uid, NOBODY.pw_gid, follow_symlinks=False)
    with pytest.raises(pathtrust.UntrustedPath, match="theirs: owned by uid"):
        pathtrust.check(theirs / "spa.toml", owners)
    with pytest.raises(pathtrust.UntrustedPath, match="sticky: writable by group or others"):
        pathtrust.check(sticky, owners)  # as the path itself it is as loose as it looks


@needs_root
def test_a_state_directory_of_the_old_layout_still_passes(server: Path, capsys: pytest.CaptureFixture[str]) -> None:
    give_to_nobody(server, "state")  # what spa serve did before the state directory had two parts
    assert main(["check", "--config", str(server)]) == 0
    give_to_nobody(server, ".")
    assert main(["check", "--config", str(server)]) == 1
    assert "owned by uid" in capsys.readouterr().err


# -- the state directory: root's part and the worker's ------------------------------------------


def account() -> privdrop.Account:
    return privdrop.Account(NOBODY.pw_name, NOBODY.pw_uid, NOBODY.pw_gid)


@needs_root
def test_prepare_gives_root_the_top_and_the_worker_its_own(tmp_path: Path) -> None:
    state = tmp_path / "state"
    directory = statedir.prepare(state, account())
    try:
        top, worker = os.stat(state), os.stat(state / statedir.WORKER)
        assert (top.st_uid, stat.S_IMODE(top.st_mode)) == (0, 0o700)
        assert (worker.st_uid, worker.st_gid, stat.S_IMODE(worker.st_mode)) == (NOBODY.pw_uid, NOBODY.pw_gid, 0o700)
        statedir.write_status(directory, '{"time": 1}\n')
        assert json.loads(statedir.read_status(state)) == {"time": 1}
    finally:
        os.close(directory)


@needs_root
def test_prepare_takes_back_a_state_directory_of_the_old_layout(tmp_path: Path) -> None:
    """Before: the worker's user owned STATE_DIR and anything it planted there."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "ledger").write_text("floor 5\n")
    file, before = target(tmp_path)
    for name in ("ledger.tmp", "status.json.tmp", "status.json"):
        (state / name).symlink_to(file)
    for path in (state, *state.iterdir()):
        os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid, follow_symlinks=False)
    directory = statedir.prepare(state, account())
    try:
        statedir.write_status(directory, "{}\n")
        statedir.write_status(directory, "{}\n")
    finally:
        os.close(directory)
    assert os.stat(state).st_uid == 0
    assert sorted(p.name for p in (state / statedir.WORKER).iterdir()) == ["ledger", "ledger.tmp"]
    assert (state / statedir.WORKER / "ledger").read_text() == "floor 5\n"
    assert (state / "status.json").read_text() == "{}\n" and not (state / "status.json").is_symlink()
    assert looks(file) == before


@needs_root
def test_checks_as_the_worker_run_with_its_rights_and_report_back(tmp_path: Path) -> None:
    state = tmp_path / "state"
    os.close(statedir.prepare(state, account()))

    def write(directory: int) -> None:
        descriptor = os.open("as-whom", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=directory)
        os.close(descriptor)

    statedir.as_worker(state, account(), write)
    assert os.stat(state / statedir.WORKER / "as-whom").st_uid == NOBODY.pw_uid

    def fail(_: int) -> None:
        raise SpaError("the ledger is damaged")

    with pytest.raises(SpaError, match="^the ledger is damaged$"):
        statedir.as_worker(state, account(), fail)
    with pytest.raises(PermissionError):
        statedir.as_worker(state, account(), lambda _: os.open(tmp_path / "nope", os.O_CREAT | os.O_WRONLY))


@needs_root
def test_a_fifo_planted_as_the_ledger_cannot_hang_the_start(
        server: Path, capsys: pytest.CaptureFixture[str], quiet_logging: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(statedir, "CHECK_WAIT", 1.0)
    state = server.parent / "state"
    os.close(statedir.prepare(state, account()))
    os.mkfifo(state / statedir.WORKER / "ledger")
    capsys.readouterr()
    started = time.monotonic()
    assert main(["serve", "--config", str(server)]) == 1
    assert time.monotonic() - started < 5
    # Refused at once as no regular file (the state files open with O_NONBLOCK); the
    # time limit on checks as the worker's user stays as the second line.
    assert "ledger is not a regular file" in capsys.readouterr().err


# -- counters: only names of spa's own shape reach status.json and the terminal ------------------


@pytest.mark.parametrize("counts", [
    {"gate.accepted\x1b]0;owned\x07": 1},
    {"\x1b[2J": 1},
    {"gate.accepted": -1},
    {"gate.accepted": True},
    {"gate.accepted": 1.5},
    {"a" * 65: 1},
    {"Gate.accepted": 1},
    {"gate accepted": 1},
    {f"c{number}": number for number in range(messages.MAX_COUNTERS + 1)},
])
def test_counters_not_shaped_like_spas_own_drop_the_stats_line(counts: dict[str, object]) -> None:
    line = json.dumps({"stats": counts}).encode()
    assert len(line) <= messages.MAX_LINE
    assert messages.decode(line) is None


def test_the_workers_own_counter_names_pass() -> None:
    counts = {"gate.accepted": 3, "gate.state_unwritable": 0, "packets.icmp": 9, "capture.dropped": 0,
              "junk": 2, "sequence.sources": 1, "dns.send_failed": 0}
    assert messages.decode(messages.encode(messages.Stats(counts))) == messages.Stats(counts)


def test_spa_status_prints_no_text_it_did_not_make(server: Path) -> None:
    """status.json of the old layout could be written by the worker's user."""
    state = server.parent / "state"
    (state / "status.json").write_text(json.dumps({
        "time": time.time() - 3, "worker": "\x1b]2;worker\x07", "grants_applied": 2,
        "counts": {"gate.accepted": 2, "\x1b]0;pwned\x07\x1b[2J": 1, "packets.icmp": "\x1b[31m"},
    }))
    shown = format_counters(server)
    assert shown == ("server: worker ?, 2 grants applied, counters from 3 s ago\n"
                     "  gate.accepted            2\n"
                     "  (2 entries not shown: not counters spa writes)\n")
    assert describe_status({"time": "soon", "counts": []}, 0.0) == (
        "server: worker ?, ? grants applied, counters from an unknown time\n")


@needs_root
def test_spa_status_never_reads_through_a_link(server: Path, tmp_path: Path) -> None:
    file, _ = target(tmp_path)
    file.write_text(json.dumps({"time": time.time(), "worker": 1, "grants_applied": 0, "counts": {"gate.accepted": 7}}))
    (server.parent / "state" / "status.json").symlink_to(file)
    assert format_counters(server) == "server: no counters (is spa serve running?)\n"


# -- writes by name in directories others may write ------------------------------------------------


@needs_root
def test_write_private_never_writes_through_planted_links(tmp_path: Path) -> None:
    """`spa keygen --out /tmp/alice.spakey`: /tmp is everyone's."""
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o1777)
    file, before = target(tmp_path)
    (loose / ".alice.spakey.tmp").symlink_to(file)  # the temporary name once used
    (loose / "alice.spakey").symlink_to(file)
    keys.write_private(loose / "alice.spakey", "secret\n")
    assert looks(file) == before
    written = loose / "alice.spakey"
    assert not written.is_symlink() and written.read_text() == "secret\n"
    assert stat.S_IMODE(os.stat(written).st_mode) == 0o600


def test_started_as_another_user_spa_trusts_only_roots_files(server: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not root, the worker is spa's own user: an outside review had it rewrite
    spa.toml and server.secret, which that user owned. Root owns them then,
    readable by spa's group (0640), and a file of spa's own user is refused."""
    from spa import config as config_module

    nobody = pwd.getpwnam("nobody")
    secret = server.parent / "server.secret"
    os.chown(secret, 0, nobody.pw_gid)
    os.chmod(secret, 0o640)
    monkeypatch.setattr(os, "geteuid", lambda: nobody.pw_uid)
    monkeypatch.setattr(os, "getegid", lambda: nobody.pw_gid)
    keys.check_server_private(secret)  # root's, group read for spa's group: fine
    os.chmod(secret, 0o660)
    with pytest.raises(SpaError, match="readable by group or others"):
        keys.check_server_private(secret)  # the group could write it
    os.chmod(secret, 0o640)
    config = config_module.load(server)
    os.chown(server, nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(SpaError, match=str(server)):
        config_module.check_ownership(config)  # spa's own user may change it: so could its worker
