"""The worker's seccomp filter, installed for real in a forked child (no root needed).

A socketpair end stands in for a capture socket: what the filter decides
depends on the descriptor number only. The child enters the sandbox with
the same ``sandbox.enter`` the worker calls, tries each call, and reports
the errno it got (or "ok") through a pipe; the attack on real capture
sockets in the real worker is tests/e2e/test_sandbox.py.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import re
import signal
import socket
import struct
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from spa.daemon import sandbox
from spa.intake import bpf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from world.need import need  # noqa: E402
from world.worker_attacks import in_child, outcome  # noqa: E402

HEADERS = {0: Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"), 1: Path("/usr/include/asm-generic/unistd.h")}
ARCH = sandbox.architecture(os.uname().machine, struct.calcsize("P"))
FIONBIO = 0x5421
SIOCGIFFLAGS = 0x8913
CLONE_NEWUSER = 0x10000000
PTRACE_TRACEME = 0

_libc = ctypes.CDLL(None, use_errno=True)


def _call(result: int) -> None:
    if result == -1:
        raise OSError(ctypes.get_errno(), "")


def _syscall(name: str, *args: int) -> None:
    assert ARCH is not None
    number = ARCH.number(name)
    assert number is not None
    _call(_libc.syscall(ctypes.c_long(number), *(ctypes.c_long(a) for a in args)))


def _header_numbers(path: Path) -> dict[str, int]:
    text = path.read_text()
    found = {name: int(value) for name, value in re.findall(r"#define __NR(?:3264)?_(\w+)\s+(\d+)\b", text)}
    return found


@pytest.mark.parametrize("column", [0, 1], ids=["x86_64", "generic"])
def test_the_number_tables_match_the_kernel_headers(column: int) -> None:
    need(HEADERS[column].exists(), f"needs {HEADERS[column]} (Debian package linux-libc-dev)")
    numbers = _header_numbers(HEADERS[column])
    for name, pair in sandbox.NUMBERS.items():
        assert pair[column] == numbers.get(name), name


def test_every_named_call_has_a_number() -> None:
    named = set(sandbox.DENIED) | set(sandbox.ON_CAPTURE) | {"clone", "clone3", "fcntl", "ioctl", "prctl"}
    assert named <= set(sandbox.NUMBERS)


def test_the_abi_is_what_counts_not_the_kernel() -> None:
    assert sandbox.architecture("x86_64", 8) is sandbox.X86_64
    assert sandbox.architecture("aarch64", 8) is sandbox.AARCH64
    assert sandbox.architecture("x86_64", 4) is None  # a 32-bit Python on a 64-bit kernel
    assert sandbox.architecture("ppc64le", 8) is None


@pytest.mark.parametrize("arch", [sandbox.X86_64, sandbox.AARCH64, sandbox.RISCV64], ids=lambda a: a.name)
def test_another_architecture_is_killed_first(arch: sandbox.Architecture) -> None:
    program = sandbox.program(arch, [7])
    assert program[0] == (bpf.LD_ABS, 0, 0, sandbox.ARCH)
    code, jt, jf, k = program[1]
    assert (code, jt, k) == (bpf.JEQ_K, 0, arch.audit)
    assert program[2 + jf] == (bpf.RET_K, 0, 0, sandbox.SECCOMP_RET_KILL_PROCESS)


def test_many_capture_sockets_still_assemble_and_too_many_are_refused() -> None:
    assert len(sandbox.program(sandbox.X86_64, range(3, 3 + sandbox.MAX_CAPTURE_FDS))) < bpf.MAX_INSTRUCTIONS
    with pytest.raises(sandbox.SandboxError, match="at most"):
        sandbox.program(sandbox.X86_64, range(3, 4 + sandbox.MAX_CAPTURE_FDS))


def _sandboxed(attempts: Callable[[socket.socket, socket.socket, Path], dict[str, str]]) -> dict[str, str]:
    """Run ``attempts(capture, other, directory)`` in a forked child after ``sandbox.enter``."""
    need(ARCH is not None, f"no seccomp table for {os.uname().machine}")
    capture, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    capture.setblocking(False)
    read, write = os.pipe()
    with tempfile.TemporaryDirectory() as directory:
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                os.close(read)
                assert sandbox.enter([capture.fileno()])
                os.write(write, json.dumps(attempts(capture, other, Path(directory))).encode())
                status = 0
            finally:
                os._exit(status)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            report = pipe.read()
        _, status = os.waitpid(pid, 0)
    capture.close()
    other.close()
    assert os.waitstatus_to_exitcode(status) == 0, status
    result: dict[str, str] = json.loads(report)
    return result


def _clone_new_user() -> None:
    assert ARCH is not None
    child = _libc.syscall(ctypes.c_long(ARCH.number("clone") or 0), ctypes.c_long(CLONE_NEWUSER | signal.SIGCHLD),
                          ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0))
    if child == 0:
        os._exit(0)
    _call(child)
    os.waitpid(child, 0)


def _refused(capture: socket.socket, other: socket.socket, directory: Path) -> dict[str, str]:
    fd = capture.fileno()
    source = directory / "source"
    source.write_bytes(b"x")
    pipe_r, pipe_w = os.pipe()
    os.write(pipe_w, b"x")
    return {
        "write": outcome(lambda: os.write(fd, b"x")),
        "writev": outcome(lambda: os.writev(fd, [b"x"])),
        "pwritev": outcome(lambda: os.pwritev(fd, [b"x"], -1)),
        "pwritev2": outcome(lambda: os.pwritev(fd, [b"x"], -1, os.RWF_APPEND)),
        "send": outcome(lambda: capture.send(b"x")),
        "sendmsg elsewhere": outcome(lambda: other.sendmsg([b"x"])),
        "sendfile": outcome(lambda: os.sendfile(fd, os.open(source, os.O_RDONLY), 0, 1)),
        "splice": outcome(lambda: os.splice(pipe_r, fd, 1)),
        "ioctl": outcome(lambda: fcntl.ioctl(fd, FIONBIO, struct.pack("i", 1))),
        "interface ioctl elsewhere": outcome(lambda: fcntl.ioctl(other.fileno(), SIOCGIFFLAGS,
                                                                   struct.pack("16sH14x", b"lo", 0))),
        "dup": outcome(lambda: os.dup(fd)),
        "dup2": outcome(lambda: os.dup2(fd, 200)),
        "dup3": outcome(lambda: os.dup2(fd, 201, inheritable=False)),
        "F_DUPFD": outcome(lambda: fcntl.fcntl(fd, fcntl.F_DUPFD, 0)),
        "F_DUPFD_CLOEXEC": outcome(lambda: fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 0)),
        "socket": outcome(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)),
        "socketpair": outcome(lambda: socket.socketpair()),
        "bind": outcome(lambda: other.bind("\0spa-sandbox-test")),
        "connect": outcome(lambda: other.connect("\0spa-sandbox-test")),
        "setsockopt elsewhere": outcome(lambda: other.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)),
        "execve": in_child(lambda: os.execv("/bin/true", ["true"])),
        "unshare": in_child(lambda: _call(_libc.unshare(CLONE_NEWUSER))),
        "clone into a namespace": outcome(_clone_new_user),
        "ptrace": in_child(lambda: _syscall("ptrace", PTRACE_TRACEME, 0, 0, 0)),
        "bpf": outcome(lambda: _syscall("bpf", 0, 0, 0)),
        "perf_event_open": outcome(lambda: _syscall("perf_event_open", 0, 0, -1, -1, 0)),
        "io_uring_setup": outcome(lambda: _syscall("io_uring_setup", 1, 0)),
        "io_setup": outcome(lambda: _syscall("io_setup", 1, 0)),
        "pidfd_getfd": outcome(lambda: _syscall("pidfd_getfd", 0, fd, 0)),
        "mount": outcome(lambda: _syscall("mount", 0, 0, 0, 0, 0)),
        "keyctl": outcome(lambda: _syscall("keyctl", 0, 0, 0, 0, 0)),
        # Dumpable again, any process of the worker's user could pidfd_getfd its capture socket.
        "prctl dumpable": outcome(lambda: _syscall("prctl", sandbox.PR_SET_DUMPABLE, 1, 0, 0, 0)),
        "prctl ptracer": outcome(lambda: _syscall("prctl", sandbox.PR_SET_PTRACER, -1, 0, 0, 0)),
    }


def test_the_sandbox_refuses_each_way_out_with_eperm() -> None:
    refused = _sandboxed(_refused)
    assert {name: got for name, got in refused.items() if got != "EPERM"} == {}


def test_x32_calls_are_refused() -> None:
    need(ARCH is sandbox.X86_64, "x32 is an x86_64 matter")
    got = _sandboxed(lambda *_: {"x32 getpid": outcome(lambda: _call(_libc.syscall(0x40000000 | 39)))})
    assert got == {"x32 getpid": "EPERM"}


def _allowed(capture: socket.socket, other: socket.socket, directory: Path) -> dict[str, str]:
    fd = capture.fileno()
    started = threading.Event()
    thread = threading.Thread(target=started.set)

    def files() -> None:
        # What the ledger and the worker's state files do, relative to the directory.
        state = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        handle = os.open("ledger.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600, dir_fd=state)
        os.write(handle, b"record\n")
        os.ftruncate(handle, 3)
        os.fsync(handle)
        os.close(handle)
        os.replace("ledger.tmp", "ledger", src_dir_fd=state, dst_dir_fd=state)
        os.fsync(state)
        os.unlink("ledger", dir_fd=state)
        os.close(state)

    def thread_runs() -> None:
        thread.start()  # glibc tries clone3 (ENOSYS here), then clone without namespace flags
        thread.join(5)
        if not started.is_set():
            raise OSError(errno.ETIMEDOUT, "")

    return {
        "read the capture": outcome(lambda: capture.recv(64)),
        "getsockopt on the capture": outcome(lambda: capture.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)),
        "F_GETFL on the capture": outcome(lambda: fcntl.fcntl(fd, fcntl.F_GETFL)),
        "send on another socket": outcome(lambda: other.send(b"reply")),
        "dup another descriptor": outcome(lambda: os.close(os.dup(other.fileno()))),
        "ioctl elsewhere": outcome(lambda: fcntl.ioctl(other.fileno(), FIONBIO, struct.pack("i", 1))),
        "write stderr": outcome(lambda: os.write(2, b"")),
        "isatty": outcome(lambda: os.isatty(0)),
        "close-on-exec": outcome(lambda: os.set_inheritable(other.fileno(), False)),
        "files in the state directory": outcome(files),
        "fork": in_child(lambda: None),
        "thread": outcome(thread_runs),
        "other prctl": outcome(lambda: _syscall("prctl", 3, 0, 0, 0, 0)),  # PR_GET_DUMPABLE: reads stay
    }


def test_the_sandbox_leaves_what_the_worker_needs() -> None:
    allowed = _sandboxed(_allowed)
    assert allowed == {**dict.fromkeys(allowed, "ok"), "read the capture": "EAGAIN"}
