"""The privileged side of ``spa serve``: firewall, sockets, and the worker's life.

The supervisor never parses a packet. It opens what needs privilege, forks
the worker (which drops root at once), applies the grants the worker hands
back after checking them again (recheck.py), reloads on SIGHUP by starting
a fresh worker with the new configuration, and restarts a crashed worker.
Replay state lives in the ledger file, so it survives both. The state
directory has a part for root and a part for the worker (statedir.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import selectors
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from spa import config as config_module
from spa.config import Config, wanted
from spa.core.guesses import FileGuesses
from spa.core.keyring import Keyring
from spa.core.ledger import FileLedger
from spa.core.rates import RateFile
from spa.errors import SpaError
from spa.firewall import Backend, FirewallError, open_backend
from spa.firewall.watch import NftWatch

from . import messages, privdrop, recheck, sandbox, statedir
from .contain import COUNTER, Unexpected
from .integrity import ClockWatch, keep_guard
from .listeners import Listeners, open_listeners
from .worker import Worker, pipe_emitter, serve

log = logging.getLogger("spa")
T = TypeVar("T")

LEDGER = "ledger"  # in the worker's part of the state directory
GUESSES = "guesses"  # wrong one-time codes (spa.core.guesses), beside the ledger
RATES = "rates"  # the rate limits, saved whole (spa.core.rates)
STOP_WAIT = 5.0  # seconds a worker gets to finish before SIGKILL
CRASHES_ALLOWED = 5  # worker crashes within CRASH_PERIOD before the supervisor gives up
CRASH_PERIOD = 60.0
HOLD_SPIN = 0.002  # seconds the supervisor polls for Synced before it sleeps again
MAX_HELD = 64  # grants waiting for Synced; an honest worker sends Synced right after
CHECK_EVERY = 1.0  # seconds between guard and clock checks when nothing is heard
CHECK_GAP = 0.05  # least seconds between two checks a flood of nftables notifications asks for
GUARD_LOST = 3  # exit status: spa's firewall rules were removed and could not be restored
ECHO_SYSCTLS = ("/proc/sys/net/ipv4/icmp_echo_ignore_all", "/proc/sys/net/ipv6/icmp/echo_ignore_all")


def ledger_retention(config: Config) -> int:
    """How long accepted tokens are remembered: the window, plus room for clock steps."""
    return config.gate.time_window + 600


def restart_needed(old: Config, new: Config) -> str | None:
    """What in ``new`` cannot be applied by a reload (sockets, firewall, user), if anything."""
    checks = (
        ("[firewall] or the knock ports", old.firewall != new.firewall),
        ("server.interfaces", old.interfaces != new.interfaces),
        ("server.user", old.user != new.user),
        ("server.state_dir", old.state_dir != new.state_dir),
        ("the captured carriers", wanted(old) != wanted(new)),
        ("carriers.icmp.silence_replies",
         (old.icmp and old.icmp.silence_replies) != (new.icmp and new.icmp.silence_replies)),
        (
            "carriers.dns listen, port or mode",
            (old.dns and (old.dns.listen, old.dns.port, old.dns.mode))
            != (new.dns and (new.dns.listen, new.dns.port, new.dns.mode)),
        ),
    )
    changed = [what for what, differs in checks if differs]
    return ", ".join(changed) if changed else None


class EchoSilence:
    """``net.ipv{4,6}...echo_ignore_all = 1`` while spa runs, restored afterwards.

    The kernel then sends no echo replies, yet the requests still reach spa's
    capture (AF_PACKET sees them before the ICMP stack ignores them).
    """

    def __init__(self) -> None:
        self._saved: dict[str, str] = {}

    def on(self) -> None:
        for path in ECHO_SYSCTLS:
            try:
                self._saved[path] = Path(path).read_text().strip()
                Path(path).write_text("1\n")
            except OSError as problem:
                log.warning(f"cannot silence echo replies ({path}): {problem.strerror}")

    def off(self) -> None:
        for path, value in self._saved.items():
            try:
                Path(path).write_text(value + "\n")
            except OSError:
                pass
        self._saved.clear()


@dataclass
class _Child:
    pid: int
    pipe: int
    reader: messages.LineReader


class Supervisor:
    """Runs ``spa serve`` for one config file until SIGTERM or SIGINT."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.config: Config = config_module.load(config_path)
        self.keyring: Keyring = config_module.load_keyring(self.config)
        self.account = privdrop.account(self.config.user) if os.geteuid() == 0 else None
        self.backend: Backend | None = None
        self.listeners: Listeners | None = None
        self.silence = EchoSilence()
        self.child: _Child | None = None
        self.selector = selectors.DefaultSelector()
        self.crashes: list[float] = []
        self.granted = 0
        self.held: list[messages.Timed] = []  # re-checked grants waiting for the worker's Synced
        self.grant_budget = self._budget()
        self.watch: NftWatch | None = None
        self.state: int | None = None  # root's part of the state directory (statedir.py)
        self.clock = ClockWatch(time.time, time.monotonic, self.config.gate.time_window)
        self._checked = 0.0  # time.monotonic() of the last guard check
        self._wake_r, self._wake_w = socket.socketpair()
        self.counts: Counter[str] = Counter({COUNTER: 0})
        self.unexpected = Unexpected(self.counts, "supervisor")

    # -- life cycle --------------------------------------------------------

    def run(self) -> int:
        try:
            self._start()
            return self._loop()
        finally:
            self._shutdown()

    def _start(self) -> None:
        config = self.config
        # Read the worker's files once here to refuse a damaged one before
        # anything listens: as the worker's user, since the files are that user's.
        try:
            self.state = statedir.prepare(config.state_dir, self.account)
            statedir.as_worker(config.state_dir, self.account, lambda directory: _check_state(config, directory))
        except OSError as problem:
            why = problem.strerror or problem
            raise SpaError(f"{config.state_dir}: cannot keep replay state there: {why}") from None
        self.backend = open_backend(config.firewall)
        self.backend.install()
        self._watch_nftables()
        self.clock.look()
        self.listeners = open_listeners(config)
        if config.icmp is not None and config.icmp.silence_replies:
            self.silence.on()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno())
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD):
            signal.signal(number, lambda *_: None)  # the wakeup fd carries the number
        self.selector.register(self._wake_r, selectors.EVENT_READ, "signal")
        self._spawn()
        log.info(self._banner())

    def _banner(self) -> str:
        config = self.config
        parts = []
        if config.icmp:
            parts.append("icmp")
        if config.dns:
            parts.append(f"dns {config.dns.zone} ({config.dns.mode})")
        if config.udp:
            parts.append(f"udp/{config.udp.port}")
        if config.sequence:
            parts.append("one-time sequences")
        if config.statics:
            parts.append(f"{len(config.statics)} fixed sequences")
        user = self.account.name if self.account else "the current user"
        protect = ", ".join(map(str, config.firewall.protect))
        assert self.child is not None
        return (
            f"serving {', '.join(parts) or 'nothing'}; guarding {protect} ({config.firewall.backend}); "
            f"{len(self.keyring)} keys; worker {self.child.pid} as {user}"
        )

    def _watch_nftables(self) -> None:
        """Hear ruleset changes at once (else the 1 s tick finds them)."""
        if self.config.firewall.backend != "nftables":
            return
        try:
            self.watch = NftWatch()
        except OSError as problem:
            log.warning(f"cannot watch nftables for changes ({problem.strerror}); checking the guard every second")
            return
        self.selector.register(self.watch.fileno(), selectors.EVENT_READ, "nftables")

    def _loop(self) -> int:
        """Serve until a stop signal or a lost guard; each event is handled on its own,
        so a bug one of them hits is contained (contain.py), not the end of every grant."""
        due = time.monotonic() + CHECK_EVERY
        while True:
            for selected, _ in self.selector.select(timeout=max(0.0, due - time.monotonic())):
                if selected.data == "signal":
                    for number in self._contained("the signal pipe", self._signals) or []:
                        status = self._contained(f"signal {number}", lambda: self._on_signal(number))
                        if status is not None:
                            return status
                elif selected.data == "nftables":
                    if self._contained("nftables notifications", self._nftables_changed):
                        due = min(due, self._checked + CHECK_GAP)
                else:
                    self._contained("the worker's pipe", self._read_child)
            status = self._contained("the worker's exit", self._reap)
            if status is not None:
                return status
            if time.monotonic() >= due:
                if self._contained("the guard check", self.check) is False:
                    return GUARD_LOST
                due = self._checked + CHECK_EVERY

    def _contained(self, event: str, handle: Callable[[], T]) -> T | None:
        """``handle()``, or None if it raised: then the exception is counted and logged once."""
        try:
            return handle()
        except Exception as problem:  # noqa: BLE001 - contained: see contain.py
            self.unexpected.caught(event, problem)
            return None

    def _nftables_changed(self) -> bool:
        assert self.watch is not None
        return self.watch.drain()

    def check(self) -> bool:
        """The periodic look at the guard and the clock; False: stop serving."""
        self._checked = time.monotonic()
        self.clock.look()
        assert self.backend is not None
        return keep_guard(self.backend)

    def _signals(self) -> list[int]:
        try:
            return list(self._wake_r.recv(64))
        except BlockingIOError:
            return []

    def _on_signal(self, number: int) -> int | None:
        if number in (signal.SIGTERM, signal.SIGINT):
            log.info("stopping")
            return 0
        if number == signal.SIGHUP:
            self.reload()
        elif number == signal.SIGUSR1 and self.child is not None:
            os.kill(self.child.pid, signal.SIGUSR1)
        return None

    def _shutdown(self) -> None:
        signal.set_wakeup_fd(-1)
        self._stop_child()
        if self.listeners is not None:
            self.listeners.close()
        self.silence.off()
        if self.watch is not None:
            self.watch.close()
        if self.backend is not None:
            self.backend.close()  # an owned grant table goes with it: every grant ends
        self.selector.close()
        if self.state is not None:
            os.close(self.state)
        self._wake_r.close()
        self._wake_w.close()

    # -- reload --------------------------------------------------------------

    def reload(self) -> bool:
        """Load the config again; on any error keep the running one and say why."""
        try:
            new = config_module.load(self.config_path)
            keyring = config_module.load_keyring(new)
            changed = restart_needed(self.config, new)
            if changed:
                raise SpaError(f"{changed} changed: restart spa to apply that")
        except Exception as problem:  # noqa: BLE001 - nothing a config file holds may stop a running server
            if not isinstance(problem, SpaError):
                self.unexpected.caught("the reload", problem)  # the loader should have named file and line
            log.error(f"reload refused, the running configuration stays: {_why(problem)}")
            return False
        self._stop_child()
        self.config, self.keyring = new, keyring
        self.grant_budget = self._budget()
        self.clock.time_window = new.gate.time_window
        self._spawn()
        log.info(f"reloaded {self.config_path}: {len(keyring)} keys, {len(new.statics)} fixed sequences")
        return True

    def _budget(self) -> recheck.GrantBudget:
        # Twice the gate's burst: grants reach root bunched when the worker was slow
        # (a long fsync), though the gate spaced their knocks by arrival time.
        return recheck.GrantBudget(self.keyring, self.config.gate.key_rate, 2 * self.config.gate.key_burst)

    # -- the worker ------------------------------------------------------------

    def _spawn(self) -> None:
        read, write = os.pipe()
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the supervisor's code
            status = 70
            try:
                os.close(read)
                status = _worker_main(self.config, self.keyring, self.listeners, write, self.account, supervisor)
            except BaseException as problem:  # noqa: BLE001 - report anything, then leave
                log.error(f"worker failed: {problem}")
            finally:
                os._exit(status)
        os.close(write)
        os.set_blocking(read, False)
        self.child = _Child(pid, read, messages.LineReader())
        self.selector.register(read, selectors.EVENT_READ, "child")

    def _read_child(self) -> None:
        child = self.child
        if child is None:
            return
        deadline = 0.0
        while True:
            try:
                data = os.read(child.pipe, 65536)
            except BlockingIOError:
                data = None
            if data == b"":
                self._close_pipe(child)
                return
            if data:
                for line in child.reader.feed(data):
                    self._contained("a message from the worker", lambda: self._handle(messages.decode(line)))
            if not self.held:
                return
            # A grant is held until the worker's fsync ends (usually well under
            # a millisecond): wait for Synced here, polling, rather than sleep
            # in the selector and pay a second wake-up from idle (~0.3 ms).
            now = time.monotonic()
            deadline = deadline or now + HOLD_SPIN
            if now >= deadline:
                return
            os.sched_yield()  # on one core, the worker needs the CPU to finish its fsync

    def _handle(self, message: messages.Message | None) -> None:
        if message is None:
            log.warning("dropped a malformed message from the worker")
        elif isinstance(message, messages.Stats):
            # errors.unexpected counts the supervisor's contained bugs too (its log names which side).
            counts = {**message.counts, COUNTER: message.counts.get(COUNTER, 0) + self.unexpected.count}
            self._write_status(counts)
        elif isinstance(message, messages.Synced):
            held, self.held = self.held, []
            for timed in held:
                self._contained("a grant", lambda: self._apply(timed))  # one bad grant costs only itself
        elif isinstance(message, messages.Discard):
            if self.held:
                log.error(f"dropped {len(self.held)} grant(s): the worker could not make their tokens durable")
            self.held = []
        else:
            # Checked now, while the worker fsyncs the ledger; applied on Synced.
            why = recheck.refusal(message.grant, self.keyring, self.config.firewall)
            why = why or self.grant_budget.refusal(message.grant, time.monotonic())  # a clock step must not refuse
            if why:
                log.error(f"refused a grant the worker asked for: {why}")
            elif len(self.held) >= MAX_HELD:
                log.error(f"refused a grant the worker asked for: over {MAX_HELD} grants waiting for the ledger")
            else:
                self.held.append(message)

    def _apply(self, timed: messages.Timed) -> None:
        """Apply a held grant for what is left of it: it ends when its knock's grant would have."""
        grant = timed.grant
        late = max(0.0, time.time() - timed.at)
        left = round(grant.seconds - late)
        if left < 1:
            log.error(f"dropped the grant of {grant.request} to {grant.address} ({grant.key}): "
                      f"its knock arrived {late:.0f} s ago and the grant would have ended (was spa stopped?)")
            return
        if left < grant.seconds:
            grant = dataclasses.replace(grant, seconds=left)
        assert self.backend is not None
        try:
            self.backend.grant(grant)
            self.granted += 1
        except FirewallError as problem:
            log.error(f"grant of {grant.request} to {grant.address} failed: {problem}")

    def _write_status(self, counts: dict[str, int]) -> None:
        """``status.json`` for ``spa status``; ``counts`` passed messages.decode's checks."""
        assert self.child is not None
        if self.state is None:
            return
        status = {"time": time.time(), "supervisor": os.getpid(), "worker": self.child.pid,
                  "grants_applied": self.granted, "counts": counts}
        try:
            statedir.write_status(self.state, json.dumps(status, indent=1, sort_keys=True) + "\n")
        except OSError as problem:
            log.warning(f"cannot write {self.config.state_dir / statedir.STATUS}: {problem.strerror or problem}")

    def _close_pipe(self, child: _Child) -> None:
        self.held = []  # a worker gone before Synced: its tokens may not be on disk
        try:
            self.selector.unregister(child.pipe)
        except (KeyError, ValueError):
            return
        os.close(child.pipe)

    def _stop_child(self) -> None:
        child, self.child = self.child, None
        if child is None:
            return
        try:
            os.kill(child.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + STOP_WAIT
        while time.monotonic() < deadline:
            done, _ = os.waitpid(child.pid, os.WNOHANG)
            if done:
                break
            self._drain_pipe(child)
            time.sleep(0.02)
        else:
            os.kill(child.pid, signal.SIGKILL)
            os.waitpid(child.pid, 0)
        self._drain_pipe(child)
        self._close_pipe(child)

    def _drain_pipe(self, child: _Child) -> None:
        """Apply grants a stopping worker sent before it went."""
        saved, self.child = self.child, child
        try:
            self._read_child()
        except OSError:
            pass
        finally:
            self.child = saved

    def _reap(self) -> int | None:
        """Notice a worker that died on its own (or never started); restart it or give up."""
        child = self.child
        if child is None:
            return self._restart("worker did not start")  # a fork that failed, in a reload or a restart
        try:
            done, status = os.waitpid(child.pid, os.WNOHANG)
        except ChildProcessError:  # reaped already: gone, how is not known
            done, status = child.pid, 0
        if not done:
            return None
        self._drain_pipe(child)
        self._close_pipe(child)
        self.child = None
        how = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"status {os.WEXITSTATUS(status)}"
        return self._restart(f"worker exited ({how})")

    def _restart(self, what: str) -> int | None:
        now = time.monotonic()
        self.crashes = [t for t in self.crashes if now - t < CRASH_PERIOD] + [now]
        if len(self.crashes) > CRASHES_ALLOWED:
            log.error(f"{what} {len(self.crashes)} times in {CRASH_PERIOD:.0f} s; giving up")
            return 1
        log.error(f"{what}; starting a new one")
        time.sleep(min(len(self.crashes) * 0.2, 1.0))
        self._spawn()
        return None


def _why(problem: Exception) -> str:
    """A refusal's reason: a SpaError says it for people; anything else also names its type."""
    return str(problem) if isinstance(problem, SpaError) else f"{type(problem).__name__}: {problem}"


def _check_state(config: Config, directory: int) -> None:
    """Read the ledger and the wrong-code file: damage in either refuses to start."""
    where = config.state_dir / statedir.WORKER
    FileLedger(where / LEDGER, ledger_retention(config), directory).close()
    FileGuesses(where / GUESSES, config.gate.codes, directory, time.time()).close()


def _worker_main(config: Config, keyring: Keyring, listeners: Listeners | None, pipe: int,
                 account: privdrop.Account | None, supervisor: int) -> int:
    """In the forked child: shed everything privileged, then serve."""
    signal.set_wakeup_fd(-1)
    for number in (signal.SIGCHLD, signal.SIGUSR1, signal.SIGHUP):
        signal.signal(number, signal.SIG_DFL)
    privdrop.die_with_parent(supervisor)
    assert listeners is not None
    # The worker's directory is named here, as root (O_PATH: root reads
    # nothing in it), and opened after the drop: the ledger then works
    # relative to it, and the worker needs no access to the directories above.
    state = statedir.worker_handle(config.state_dir)
    capture = {s.fileno() for s in listeners.capture.sockets()} if listeners.capture is not None else set()
    keep = {0, 1, 2, pipe, state, *capture, *(s.fileno() for s in listeners.dns_udp + listeners.dns_tcp)}
    _close_other_fds(keep)  # the firewall's netlink socket above all
    os.umask(0o077)
    if account is not None:
        sandbox.hide_processes()  # while root: no /proc/<pid>/mem of other processes of the worker's user
        privdrop.drop(account)
        privdrop.die_with_parent(supervisor)  # the new credentials cleared the first request
    else:
        privdrop.shed_capabilities()  # started as another user, maybe with capabilities
    sandbox.enter(capture)  # before the first untrusted byte, the ledger file included
    try:
        # The worker syncs the ledger itself, after sending a grant and
        # before the supervisor may apply it (worker.Worker._release).
        state = statedir.enter(state)  # as the worker's user now: its own directory, for anything it keeps
        ledger = FileLedger(config.state_dir / statedir.WORKER / LEDGER, ledger_retention(config),
                            directory=state, sync_each=False)
        guesses = FileGuesses(config.state_dir / statedir.WORKER / GUESSES, config.gate.codes, state, time.time())
    except OSError as problem:
        user = account.name if account else "this user"
        why = problem.strerror or problem
        raise SpaError(f"{config.state_dir}: replay state not writable by {user}: {why}") from None
    rates = RateFile(config.state_dir / statedir.WORKER / RATES, state)
    worker = Worker(config, keyring, ledger, pipe_emitter(pipe), guesses, rates)
    try:
        return serve(worker, listeners)
    finally:
        ledger.close()
        guesses.close()


def _close_other_fds(keep: set[int]) -> None:
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass
