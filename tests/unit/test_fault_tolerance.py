"""Faults without root: tampered firewall structures, clock steps, a full disk.

The kernel-facing halves (a real ``nft delete table``, a real full tmpfs,
libfaketime) are in tests/e2e/test_faults.py; here the same decisions are
driven through fakes so every branch runs on any machine.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from makings import CLIENT, NOW

from spa.cli import main
from spa.core.events import Request
from spa.core.journal import Journal
from spa.core.ledger import Entry, FileLedger
from spa.daemon.integrity import ClockWatch, keep_guard
from spa.firewall import FirewallError, FirewallSettings, nft_render
from spa.firewall.iptables import IptablesBackend
from spa.firewall.libnft import NftError
from spa.firewall.nftables import NftablesBackend

SETTINGS = FirewallSettings(protect=(Request("tcp", 22),))
GUARD_LISTING = "table inet spa_guard {\n\tchain input {\n\t\tdrop\n\t}\n}\n"
GRANT_LISTING = "table inet spa_grant {\n\tchain input {\n\t}\n}\n"


class FakeNft:
    """Just enough of libnftables: the two scripts create, listings read back."""

    def __init__(self) -> None:
        self.objects: dict[str, str] = {}
        self.scripts: list[str] = []
        self.broken: str | None = None  # an error every listing fails with

    def run(self, commands: str, *, json_output: bool = False) -> str:
        if commands.startswith("list "):
            if self.broken:
                raise NftError(self.broken)
            part = "guard" if "spa_guard" in commands else "grant"
            if part not in self.objects:
                raise NftError(f"nft refused {commands!r}: Error: No such file or directory")
            return self.objects[part]
        self.scripts.append(commands)
        if commands == nft_render.guard_script(SETTINGS):
            self.objects["guard"] = GUARD_LISTING
        elif commands == nft_render.grant_script(SETTINGS):
            self.objects["grant"] = GRANT_LISTING
        return ""

    def close(self) -> None:
        pass


def installed() -> tuple[NftablesBackend, FakeNft]:
    nft = FakeNft()
    backend = NftablesBackend(SETTINGS, nft)  # type: ignore[arg-type]
    backend.install()
    nft.scripts.clear()
    return backend, nft


def test_nftables_damage_names_what_is_missing_or_changed() -> None:
    backend, nft = installed()
    assert backend.damage() is None
    del nft.objects["guard"]
    assert backend.damage() == "the guard table inet spa_guard is missing"
    nft.objects["guard"] = "table inet spa_guard {\n\tchain input {\n\t}\n}\n"  # flushed chain
    assert backend.damage() == "the guard table inet spa_guard was changed"
    nft.objects["guard"] = GUARD_LISTING
    nft.objects["grant"] = GRANT_LISTING.replace("\t}", "\t\taccept\n\t}")
    assert backend.damage() == "the grant chain inet spa_grant input was changed"
    nft.broken = "nft refused 'list table inet spa_guard': Error: Operation not permitted"
    assert "cannot be read (" in (backend.damage() or "")


def test_nftables_repair_replaces_only_the_damaged_table() -> None:
    backend, nft = installed()
    del nft.objects["guard"]
    backend.repair()
    # The grant table (and the grants in it) is left alone when only the guard went.
    assert nft.scripts == [nft_render.guard_script(SETTINGS)]
    assert backend.damage() is None
    nft.scripts.clear()
    del nft.objects["grant"]
    backend.repair()
    assert nft.scripts == [nft_render.grant_script(SETTINGS)]
    assert backend.damage() is None


def test_nftables_damage_before_install_says_so() -> None:
    backend = NftablesBackend(SETTINGS, FakeNft())  # type: ignore[arg-type]
    assert backend.damage() == "spa's firewall tables were never installed"


class FakeIptables:
    """iptables -S / -N / -F / -A / -I / -D / -C and ipset create / -n list, in memory."""

    def __init__(self) -> None:
        self.chains: dict[str, dict[str, list[str]]] = {"iptables": {"INPUT": []}, "ip6tables": {"INPUT": []}}
        self.sets: set[str] = set()

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        tool, args = argv[0], [a for a in argv[1:] if a != "-w"]
        ok = subprocess.CompletedProcess(list(argv), 0, "", "")
        failed = subprocess.CompletedProcess(list(argv), 1, "", "no such thing")
        if tool == "ipset":
            if args[0] == "create":
                self.sets.add(args[1])
            elif args[:2] == ["-n", "list"]:
                return subprocess.CompletedProcess(list(argv), 0, "\n".join(sorted(self.sets)) + "\n", "")
            return ok
        chains = self.chains[tool]
        if args == ["-S"]:
            lines = [f"-N {name}" for name in chains if name != "INPUT"]
            lines += [f"-A {name} {r}" for name, rules in chains.items() for r in rules]
            return subprocess.CompletedProcess(list(argv), 0, "\n".join(lines) + "\n", "")
        verb, chain, rule = args[0], args[1], " ".join(args[2:])
        if verb == "-N":
            if chain in chains:
                return failed
            chains[chain] = []
        elif verb == "-F":
            chains[chain] = []
        elif verb == "-A":
            chains[chain].append(rule)
        elif verb == "-I":
            chains[chain].insert(0, " ".join(args[3:]))
        elif verb == "-D":
            if rule not in chains[chain]:
                return failed
            chains[chain].remove(rule)
        return ok


def test_iptables_damage_and_repair(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeIptables()
    monkeypatch.setattr(IptablesBackend, "_call", staticmethod(fake))
    backend = IptablesBackend(FirewallSettings(backend="iptables", protect=(Request("tcp", 22),)))
    assert backend.damage() == "spa's chains and sets were never installed"
    backend.install()
    assert backend.damage() is None
    fake.chains["iptables"]["spa_guard"] = []  # iptables -F spa_guard
    fake.chains["ip6tables"]["INPUT"].clear()  # the jump went
    fake.sets.discard("spa_grant4")
    assert backend.damage() == (
        "iptables chain spa_guard was changed; ip6tables INPUT has 0 jumps to spa_guard (want 1); "
        "ipset spa_grant4 is missing"
    )
    backend.repair()
    assert backend.damage() is None
    fake.chains["iptables"]["INPUT"].clear()
    del fake.chains["iptables"]["spa_guard"]  # -D INPUT -j spa_guard; -X spa_guard
    assert backend.damage() == "iptables chain spa_guard is missing; iptables INPUT has 0 jumps to spa_guard (want 1)"
    backend.repair()
    assert backend.damage() is None
    fake.chains["iptables"]["spa_guard"].insert(0, "-j RETURN")
    assert backend.damage() == "iptables chain spa_guard was changed"


class Tampered:
    """A backend whose structures are damaged until repaired (or for good)."""

    def __init__(self, damage: str | None, repairable: bool = True) -> None:
        self.state = damage
        self.repairable = repairable
        self.repairs = 0

    def damage(self) -> str | None:
        return self.state

    def repair(self) -> None:
        self.repairs += 1
        if not self.repairable:
            raise FirewallError("cannot install the guard table: nft refused: Operation not permitted")
        self.state = None


def test_keep_guard_quiet_when_intact(caplog: pytest.LogCaptureFixture) -> None:
    backend = Tampered(None)
    assert keep_guard(backend)  # type: ignore[arg-type]
    assert backend.repairs == 0 and caplog.text == ""


def test_keep_guard_restores_and_says_what_happened(caplog: pytest.LogCaptureFixture) -> None:
    backend = Tampered("the guard table inet spa_guard is missing")
    assert keep_guard(backend)  # type: ignore[arg-type]
    assert backend.repairs == 1
    assert "removed or changed by someone else: the guard table inet spa_guard is missing" in caplog.text
    assert "restored spa's firewall rules" in caplog.text
    assert "grants live until now were lost" not in caplog.text  # only the guard went


def test_keep_guard_gives_up_when_it_cannot_restore(caplog: pytest.LogCaptureFixture) -> None:
    backend = Tampered("the guard table inet spa_guard was changed", repairable=False)
    assert not keep_guard(backend)  # type: ignore[arg-type]
    assert "stopping rather than serve with the ports unguarded" in caplog.text
    assert "Operation not permitted" in caplog.text


class Clocks:
    def __init__(self) -> None:
        self.wall = 1_800_000_000.0
        self.mono = 5000.0

    def tick(self, seconds: float, step: float = 0.0) -> None:
        self.mono += seconds
        self.wall += seconds + step


def test_clock_watch_logs_steps_not_drift(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="spa")
    clocks = Clocks()
    watch = ClockWatch(lambda: clocks.wall, lambda: clocks.mono, 60)
    assert watch.look() is None  # the first look only sets the reference
    clocks.tick(1.0, step=0.002)  # NTP slewing
    assert watch.look() is None
    clocks.tick(1.0, step=7200)
    assert watch.look() == pytest.approx(7200)
    assert "the system clock stepped forward by 7200 s" in caplog.text
    assert "tokens more than 60 s from it are refused" in caplog.text
    clocks.tick(1.0)
    assert watch.look() is None  # the new time is the reference now
    clocks.tick(1.0, step=-7155)
    assert watch.look() == pytest.approx(-7155)
    assert "stepped back by 7155 s" in caplog.text


def test_torn_tail_is_cut_in_place_without_free_space(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write torn by a full disk is dropped by truncating, which needs no new
    blocks; rewriting the ledger (a second file) would fail on that same disk."""
    path = tmp_path / "ledger"
    FileLedger(path, retention=660).record(b"ok", Entry(CLIENT, NOW, NOW), NOW)
    good = path.read_text()
    with open(path, "a") as handle:
        handle.write("deadbeef 198.51.1")

    def no_space(*_args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Journal, "rewrite", no_space)
    ledger = FileLedger(path, retention=660)
    assert path.read_text() == good and ledger.get(b"ok") is not None


class FullDisk:
    """A ledger file whose writes fail like a full disk until ``space`` is set."""

    def __init__(self, real: object) -> None:
        self.real = real
        self.space = False

    def write(self, text: str) -> int:
        return self.real.write(text)  # type: ignore[attr-defined, no-any-return]

    def flush(self) -> None:
        if not self.space:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.real.flush()  # type: ignore[attr-defined]

    def fileno(self) -> int:
        return self.real.fileno()  # type: ignore[attr-defined, no-any-return]

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.real.close()  # type: ignore[attr-defined]


def test_a_record_that_could_not_be_written_is_refused_yet_remembered(tmp_path: Path) -> None:
    path = tmp_path / "ledger"
    ledger = FileLedger(path, retention=660)
    disk = FullDisk(ledger.journal._file)
    ledger.journal._file = disk  # type: ignore[assignment]
    with pytest.raises(OSError, match="No space"):
        ledger.record(b"refused", Entry(CLIENT, NOW, NOW), NOW)
    # The gate turns that OSError into a refusal; the token stays known, so
    # sending it again once the disk has room is a replay, not a grant.
    assert ledger.get(b"refused") is not None
    disk.space = True
    ledger.record(b"next", Entry(ipaddress.ip_address("192.0.2.9"), NOW + 1, NOW + 1), NOW + 1)
    ledger.close()
    again = FileLedger(path, retention=660)
    assert again.get(b"next") is not None


def test_closing_with_unwritable_lines_does_not_raise(tmp_path: Path) -> None:
    ledger = FileLedger(tmp_path / "ledger", retention=660)
    ledger.journal._file = FullDisk(ledger.journal._file)  # type: ignore[assignment]
    with pytest.raises(OSError):
        ledger.record(b"refused", Entry(CLIENT, NOW, NOW), NOW)
    ledger.close()  # a worker stopping on a full disk exits cleanly


def test_a_state_dir_that_cannot_hold_the_ledger_is_a_one_line_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # `spa serve` sets up logging for the process: undo that after this test.
    for logger in (logging.getLogger(), logging.getLogger("spa.firewall")):
        monkeypatch.setattr(logger, "handlers", list(logger.handlers))
        monkeypatch.setattr(logger, "level", logger.level)
    directory = tmp_path / "srv"
    assert main(["init", "--dir", str(directory), "--protect", "tcp/22", "--zone", "knock.test",
                 "--backend", "dry-run"]) == 0
    state = directory / "state"
    if state.is_dir():
        state.rmdir()
    state.write_text("not a directory\n")  # in the ledger's way, for root too
    capsys.readouterr()
    assert main(["serve", "--config", str(directory / "spa.toml")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"spa: {directory / 'state'}: cannot keep replay state there: File exists"]
