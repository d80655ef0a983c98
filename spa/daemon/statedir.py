"""The state directory: a part for root and a part for the worker, never mixed.

    STATE_DIR/          root, 0700: only the supervisor writes here
        status.json     the worker's counters, written by the supervisor
        worker/         the worker's user, 0700: the worker's own files
            ledger      the replay ledger (and whatever else the worker keeps)

Root (the supervisor, ``spa status``) works in ``STATE_DIR`` by name,
relative to a descriptor: no one else can add, swap or link a name there, so
no name can lead root anywhere else. Root never opens, creates, renames or
changes anything inside ``worker/``: it makes the directory, gives it to the
worker's user, and hands the worker an ``O_PATH`` descriptor of it (which
needs no read access), which the worker opens for itself after dropping root.
Whatever the worker's user plants in ``worker/`` (a symbolic link to
/etc/shadow, a hard link to it) is then only ever followed with that user's
own rights. Anything root needs from there (the ledger's check before
``spa serve`` listens) is done by a child that dropped to that user first.

Before this layout, the worker owned ``STATE_DIR`` itself; :func:`prepare`
takes such a directory back and moves its ledger into ``worker/``.
"""

from __future__ import annotations

import json
import os
import select
import signal
import stat
import time
from collections.abc import Callable
from pathlib import Path

from spa.errors import SpaError

from . import privdrop

WORKER = "worker"
STATUS = "status.json"
MAX_STATUS = 65536  # bytes of status.json read; the supervisor writes ~1 KiB
LEGACY = ("ledger",)  # names the worker kept in STATE_DIR itself before worker/ existed
CHECK_WAIT = 10.0  # seconds a check as the worker's user may take (a FIFO planted as the ledger blocks)


def prepare(path: Path, account: privdrop.Account | None) -> int:
    """Make ``path`` root's (0700) with a ``worker/`` of the worker's own; a descriptor of ``path``.

    ``path`` itself is handled by name: config.check_ownership has found
    that no one but root can change any directory on the way to it.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    # By descriptor, and the mode set after the owner whatever it was: in the
    # layout before worker/ the worker's user owned this directory, and could
    # chmod it between a stat and the chown (an outside review's race).
    _own(os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC), os.geteuid(), os.getegid())
    directory = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _prepare_worker(directory, path, account)
    except BaseException:
        os.close(directory)
        raise
    return directory


def _prepare_worker(directory: int, path: Path, account: privdrop.Account | None) -> None:
    try:
        os.mkdir(WORKER, 0o700, dir_fd=directory)
    except FileExistsError:
        pass
    else:
        _adopt_legacy(directory)  # into worker/ while it is still root's
    info = os.stat(WORKER, dir_fd=directory, follow_symlinks=False)
    if not stat.S_ISDIR(info.st_mode):
        raise SpaError(f"{path / WORKER}: not a directory (move it away: spa keeps the worker's files there)")
    uid, gid = (account.uid, account.gid) if account else (os.geteuid(), os.getegid())
    # Through a descriptor of the directory itself (O_NOFOLLOW): a link put in
    # its place after the stat above fails to open instead of being followed.
    _own(os.open(WORKER, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory), uid, gid)


def _own(handle: int, uid: int, gid: int) -> None:
    """Give the directory ``handle`` (O_PATH, closed here) to ``uid``, mode 0700.

    Through /proc/self/fd: that names the inode opened, never a path to
    resolve again, and needs no right to read the directory (root keeps
    none over the worker's).
    """
    try:
        via = f"/proc/self/fd/{handle}"
        os.chown(via, uid, gid)
        os.chmod(via, 0o700)
    finally:
        os.close(handle)


def _adopt_legacy(directory: int) -> None:
    """Move the ledger of the layout before worker/ into worker/ (rename moves a link, never follows it)."""
    for name in os.listdir(directory):
        if name.startswith(LEGACY):
            os.rename(name, f"{WORKER}/{name}", src_dir_fd=directory, dst_dir_fd=directory)


def write_status(directory: int, text: str) -> None:
    """Replace ``status.json`` in root's directory ``directory`` atomically.

    O_EXCL and O_NOFOLLOW although no one else can write here: should
    anything ever be in the way, it is removed (the name, never what it
    points to) rather than written through.
    """
    temporary = STATUS + ".tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        descriptor = os.open(temporary, flags, 0o600, dir_fd=directory)
    except FileExistsError:
        os.unlink(temporary, dir_fd=directory)
        descriptor = os.open(temporary, flags, 0o600, dir_fd=directory)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temporary, STATUS, src_dir_fd=directory, dst_dir_fd=directory)


def read_status(path: Path) -> str:
    """The text of ``path/status.json`` (for ``spa status``): a regular file, never a link, bounded."""
    descriptor = os.open(path / STATUS, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise OSError(f"{path / STATUS} is not a regular file")
        return handle.read(MAX_STATUS).decode("utf-8", errors="replace")


def worker_handle(path: Path) -> int:
    """An O_PATH descriptor of ``path/worker`` (no access to its files; see :func:`enter`)."""
    top = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return os.open(WORKER, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=top)
    finally:
        os.close(top)


def enter(handle: int) -> int:
    """As the worker's user: a readable descriptor of the directory ``handle`` names (closed)."""
    try:
        return os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=handle)
    finally:
        os.close(handle)


def as_worker(path: Path, account: privdrop.Account | None, action: Callable[[int], None]) -> None:
    """Run ``action`` on the worker's directory with the worker's rights, not root's.

    With an account (spa runs as root), in a child that dropped to it;
    an OSError or SpaError there is raised here again. Without one, here.
    """
    handle = worker_handle(path)
    if account is None:
        _act(action, enter(handle))
        return
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # never returns into the caller's code
        status = 1
        try:
            os.close(read)
            privdrop.drop(account)
            _act(action, enter(handle))
            status = 0
        except BaseException as problem:  # noqa: BLE001 - report anything, then leave
            os.write(write, _failure(problem))
        finally:
            os._exit(status)
    os.close(handle)
    os.close(write)
    try:
        report = _read_until(read, time.monotonic() + CHECK_WAIT)
    except BaseException:
        os.kill(pid, signal.SIGKILL)  # hung (a FIFO where the ledger should be?): never left behind
        raise
    finally:
        os.close(read)
        _, status = os.waitpid(pid, 0)  # the pipe closed: it has exited, or was just killed
    if report or os.waitstatus_to_exitcode(status) != 0:
        raise _raised(report)


def _act(action: Callable[[int], None], directory: int) -> None:
    try:
        action(directory)
    finally:
        os.close(directory)


def _failure(problem: BaseException) -> bytes:
    if isinstance(problem, OSError):
        return json.dumps({"errno": problem.errno, "strerror": problem.strerror or str(problem)}).encode()
    if isinstance(problem, SpaError):
        return json.dumps({"error": str(problem)}).encode()
    return json.dumps({"error": f"a check as the worker's user failed: {problem!r}"}).encode()


def _raised(report: bytes) -> OSError | SpaError:
    try:
        body = json.loads(report)
        if "error" in body:
            return SpaError(str(body["error"]))
        return OSError(int(body["errno"] or 0), str(body["strerror"]))
    except (ValueError, KeyError, TypeError):
        return SpaError("a check as the worker's user failed and did not say why")


def _read_until(descriptor: int, deadline: float) -> bytes:
    data = b""
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([descriptor], [], [], left)
        if not ready:
            break
        chunk = os.read(descriptor, 4096)
        if not chunk:
            return data
        data += chunk
    raise SpaError(f"a check as the worker's user took over {CHECK_WAIT:.0f} s "
                   "(is something in the state directory blocking?)")
