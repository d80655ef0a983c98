"""The worker's seccomp filter: inherited sockets keep only the power it needs.

Dropping root is not enough. The kernel checks CAP_NET_RAW when a packet
socket is *made*, never again, so a compromised worker could still, on the
capture sockets it inherited, turn on outgoing capture, go promiscuous,
rebind to any interface and send frames with any source address. The
filter (locked with SO_LOCK_FILTER in spa/intake/capture.py) stays; the rest
is this classic-BPF seccomp program, entered by the worker right after it
dropped root and before it reads its first byte of untrusted input.

What it refuses, all with EPERM:

* anything that makes or shapes a socket: ``socket``, ``socketpair``,
  ``bind``, ``connect``, ``listen``, ``setsockopt`` (the worker only uses the
  sockets the supervisor set up), and ``sendmsg``/``sendmmsg``, which the
  worker never uses and which could pass a descriptor on (SCM_RIGHTS);
* on the capture descriptors, whose numbers are known when the filter is
  built: every way to send (``write``, ``writev``, ``pwrite*``, ``sendto``,
  ``sendfile`` and ``splice`` into them), ``ioctl``, and copying them to a
  number the filter does not know (``dup*``, ``fcntl(F_DUPFD*)``);
* every ``ioctl`` but the few Python itself makes (IOCTLS): no interface,
  address or route changes, whatever capabilities a non-root start left;
* leaving the process or its namespaces: ``execve*``, ``ptrace``,
  ``process_vm_*``, ``pidfd_getfd``, ``unshare``, ``setns``, ``clone`` with
  a namespace flag (``clone3``, whose flags sit behind a pointer, gets ENOSYS
  so the C library falls back to ``clone``), mounts, ``chroot``;
* kernel attack surface a knock parser has no use for: ``bpf``,
  ``perf_event_open``, ``io_uring_*`` and Linux AIO (both could write to a
  socket behind the filter's back: their descriptors sit in memory the
  filter cannot read), ``userfaultfd``, the key ring,
  modules, ``kexec``, and the administrator's calls (reboot, swap, clock).

Everything else is allowed: reading the capture and the DNS sockets,
answering DNS (``sendto`` on the DNS sockets, ``accept``), the pipe to the
supervisor, logging to stderr, and files under the state directory.

Why EPERM and not death: each refusal is then visible, one by one, to the
test that attempts it from inside the real worker (tests/e2e/test_sandbox.py),
and an honest code path that one day hits the filter fails with a logged
error instead of a SIGSYS restart loop; an attacker learns nothing from the
errno that this docstring does not say. Only a system call made through
another architecture's entry (i386 ``int 0x80``), where the numbers mean
other calls, kills the process; x32 calls (x86_64 numbers with bit 30 set)
are refused like the rest.

Why a list of refusals rather than of permissions: the worker is Python,
whose runtime and libraries use a long and changing list of system calls
(memory, signals, time, files); missing one would break spa in the field.
What matters here is named above and tested, one attempt each.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from spa.intake.bpf import JA, JEQ_K, JGE_K, JSET_K, LD_ABS, RET_K, Instruction, Item, Label, Op, assemble

from .privdrop import PR_SET_NO_NEW_PRIVS, PrivilegeError

log = logging.getLogger("spa")

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
X32_SYSCALL_BIT = 0x40000000
MAX_CAPTURE_FDS = 200  # each fd check is one conditional jump within its block (at most 255)

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6].
NR, ARCH = 0, 4


def argument(index: int) -> int:
    """Offset of the low 32 bits of argument ``index`` (little-endian): a
    descriptor is an int, so the kernel itself ignores the high half."""
    return 16 + 8 * index


F_DUPFD, F_DUPFD_CLOEXEC = 0, 1030
CLONE_NEW = 0x00000080 | 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
# CLONE_NEWTIME | NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET

# name: (x86_64, the generic table of aarch64 and riscv64); None: no such call there.
NUMBERS: dict[str, tuple[int | None, int | None]] = {
    "socket": (41, 198), "socketpair": (53, 199), "bind": (49, 200), "connect": (42, 203),
    "listen": (50, 201), "setsockopt": (54, 208), "sendmsg": (46, 211), "sendmmsg": (307, 269),
    "sendto": (44, 206), "write": (1, 64), "writev": (20, 66), "pwrite64": (18, 68),
    "pwritev": (296, 70), "pwritev2": (328, 287), "sendfile": (40, 71), "splice": (275, 76),
    "ioctl": (16, 29), "dup": (32, 23), "dup2": (33, None), "dup3": (292, 24), "fcntl": (72, 25),
    "clone": (56, 220), "clone3": (435, 435), "prctl": (157, 167), "unshare": (272, 97), "setns": (308, 268),
    "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41), "chroot": (161, 51),
    "fsopen": (430, 430), "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433),
    "move_mount": (429, 429), "open_tree": (428, 428), "mount_setattr": (442, 442),
    "execve": (59, 221), "execveat": (322, 281), "ptrace": (101, 117),
    "process_vm_readv": (310, 270), "process_vm_writev": (311, 271), "pidfd_getfd": (438, 438),
    "kcmp": (312, 272), "kexec_load": (246, 104), "kexec_file_load": (320, 294),
    "init_module": (175, 105), "finit_module": (313, 273), "delete_module": (176, 106),
    "bpf": (321, 280), "perf_event_open": (298, 241), "userfaultfd": (323, 282),
    "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218),
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426), "io_uring_register": (427, 427),
    "io_setup": (206, 0), "io_submit": (209, 2),
    "open_by_handle_at": (304, 265), "name_to_handle_at": (303, 264), "fanotify_init": (300, 262),
    "reboot": (169, 142), "swapon": (167, 224), "swapoff": (168, 225), "acct": (163, 89),
    "quotactl": (179, 60), "syslog": (103, 116), "vhangup": (153, 58),
    "settimeofday": (164, 170), "clock_settime": (227, 112), "clock_adjtime": (305, 266),
    "adjtimex": (159, 171), "sethostname": (170, 161), "setdomainname": (171, 162),
    "personality": (135, 92), "iopl": (172, None), "ioperm": (173, None),
    "modify_ldt": (154, None), "uselib": (134, None),
}

DENIED = (
    "socket", "socketpair", "bind", "connect", "listen", "setsockopt", "sendmsg", "sendmmsg",
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "fsopen", "fsconfig", "fsmount",
    "fspick", "move_mount", "open_tree", "mount_setattr",
    "execve", "execveat", "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "io_setup", "io_submit",
    "open_by_handle_at", "name_to_handle_at", "fanotify_init",
    "reboot", "swapon", "swapoff", "acct", "quotactl", "syslog", "vhangup",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "sethostname", "setdomainname",
    "personality", "iopl", "ioperm", "modify_ldt", "uselib",
)
# Refused when this argument is a capture descriptor: 0 the fd written or copied, 2 splice's fd_out.
ON_CAPTURE = {
    "write": 0, "writev": 0, "pwrite64": 0, "pwritev": 0, "pwritev2": 0, "sendto": 0,
    "sendfile": 0, "splice": 2, "dup": 0, "dup2": 0, "dup3": 0,
}
# The only ioctls allowed, and never on a capture socket: what Python itself asks
# (isatty, terminal size, O_NONBLOCK, close-on-exec, bytes readable). The rest
# (interface flags, addresses, routes: SIOCS*) is refused even if a capability
# came along.
# prctl options refused: becoming dumpable again (then any process of the
# worker's user may ptrace it, or pidfd_getfd its capture socket: an outside
# review did that as another "nobody" process), or naming a ptracer.
PR_SET_DUMPABLE, PR_SET_PTRACER = 4, 0x59616D61
PRCTLS_DENIED = (PR_SET_DUMPABLE, PR_SET_PTRACER)
IOCTLS = {"TCGETS": 0x5401, "TIOCGWINSZ": 0x5413, "FIONREAD": 0x541B, "FIONBIO": 0x5421,
          "FIONCLEX": 0x5450, "FIOCLEX": 0x5451}


class SandboxError(PrivilegeError):
    """The worker could not enter its sandbox; it must not run then."""


@dataclass(frozen=True)
class Architecture:
    """One system call ABI: its audit number, and which column of NUMBERS it uses."""

    name: str
    audit: int
    column: int
    x32: bool = False  # x86_64: calls with X32_SYSCALL_BIT come through the same door

    def number(self, call: str) -> int | None:
        return NUMBERS[call][self.column]


X86_64 = Architecture("x86_64", 0xC000003E, 0, x32=True)
AARCH64 = Architecture("aarch64", 0xC00000B7, 1)
RISCV64 = Architecture("riscv64", 0xC00000F3, 1)


def architecture(machine: str, pointer_size: int) -> Architecture | None:
    """The ABI this Python makes system calls through, or None if there is no table for it.

    The kernel's machine alone is not enough: a 32-bit Python on a 64-bit
    kernel enters through the 32-bit door, which this filter would kill.
    """
    if pointer_size != 8:
        return None
    return {"x86_64": X86_64, "aarch64": AARCH64, "riscv64": RISCV64}.get(machine)


def program(arch: Architecture, capture: Iterable[int]) -> list[Instruction]:
    """The seccomp program for ``arch`` with ``capture`` as the capture descriptors."""
    fds = sorted(set(capture))
    if len(fds) > MAX_CAPTURE_FDS:
        raise SandboxError(f"the sandbox covers at most {MAX_CAPTURE_FDS} capture sockets, not {len(fds)}")
    allow, deny = Op(RET_K, SECCOMP_RET_ALLOW), Op(RET_K, SECCOMP_RET_ERRNO | errno.EPERM)
    items: list[Item] = [Op(LD_ABS, ARCH), Op(JEQ_K, arch.audit, None, "kill"), Op(LD_ABS, NR)]
    if arch.x32:
        items.append(Op(JGE_K, X32_SYSCALL_BIT, "deny", None))
    items += [Op(JEQ_K, n, "deny", None) for n in _numbers(arch, DENIED)]
    items += [Op(JEQ_K, _number(arch, "clone3"), "nosys", None),
              Op(JEQ_K, _number(arch, "clone"), "to.clone", None),
              Op(JEQ_K, _number(arch, "fcntl"), "to.fcntl", None),
              Op(JEQ_K, _number(arch, "ioctl"), "to.ioctl", None),
              Op(JEQ_K, _number(arch, "prctl"), "to.prctl", None)]
    for call, index in ON_CAPTURE.items():
        number = arch.number(call)
        if number is not None:
            items.append(Op(JEQ_K, number, f"to.fd{index}", None))
    items.append(allow)
    # Long jumps go through ``ja`` (32-bit offsets): each block below may hold many fds.
    blocks = ["clone", "fcntl", "ioctl", "prctl", *sorted({f"fd{index}" for index in ON_CAPTURE.values()})]
    for block in blocks:
        items += [Label(f"to.{block}"), Op(JA, 0, block)]
    items += [Label("kill"), Op(RET_K, SECCOMP_RET_KILL_PROCESS), Label("deny"), deny,
              Label("nosys"), Op(RET_K, SECCOMP_RET_ERRNO | errno.ENOSYS)]
    items += [Label("clone"), Op(LD_ABS, argument(0)), Op(JSET_K, CLONE_NEW, "clone.deny", None), allow,
              Label("clone.deny"), deny]
    items += [Label("fcntl"), *_is_capture(argument(0), fds, "fcntl.cmd"), allow,
              Label("fcntl.cmd"), Op(LD_ABS, argument(1)), Op(JEQ_K, F_DUPFD, "fcntl.deny", None),
              Op(JEQ_K, F_DUPFD_CLOEXEC, "fcntl.deny", None), allow, Label("fcntl.deny"), deny]
    items += [Label("ioctl"), *_is_capture(argument(0), fds, "ioctl.deny"), Op(LD_ABS, argument(1)),
              *(Op(JEQ_K, request, "ioctl.allow", None) for request in IOCTLS.values()),
              Label("ioctl.deny"), deny, Label("ioctl.allow"), allow]
    items += [Label("prctl"), Op(LD_ABS, argument(0)),
              *(Op(JEQ_K, option, "prctl.deny", None) for option in PRCTLS_DENIED), allow,
              Label("prctl.deny"), deny]
    for index in sorted(set(ON_CAPTURE.values())):
        items += [Label(f"fd{index}"), *_is_capture(argument(index), fds, f"fd{index}.deny"), allow,
                  Label(f"fd{index}.deny"), deny]
    return assemble(items)


def _is_capture(offset: int, fds: list[int], target: str) -> list[Item]:
    """Load the argument at ``offset``; jump to ``target`` if it is one of ``fds``, else fall through."""
    return [Op(LD_ABS, offset), *(Op(JEQ_K, fd, target, None) for fd in fds)]


def _number(arch: Architecture, call: str) -> int:
    number = arch.number(call)
    assert number is not None, f"{call} exists on every supported architecture"
    return number


def _numbers(arch: Architecture, calls: Iterable[str]) -> list[int]:
    return [n for n in (arch.number(call) for call in calls) if n is not None]


def enter(capture: Iterable[int]) -> bool:
    """Install the filter on this process for good; False if this machine has no table.

    Raises :class:`SandboxError` if the kernel refuses it: a worker that
    cannot confine itself must not run. Sets no_new_privs first, which
    installing a filter without CAP_SYS_ADMIN requires (privdrop.drop sets it
    too, but a worker not started as root never calls that).
    """
    arch = architecture(os.uname().machine, struct.calcsize("P"))
    if arch is None:
        log.warning(f"no seccomp table for {os.uname().machine}: the worker runs with its capture "
                    "filter locked but can still send on its capture sockets")
        return False
    instructions = program(arch, capture)
    code = b"".join(struct.pack("=HBBI", *instruction) for instruction in instructions)
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = ctypes.create_string_buffer(struct.pack("@HP", len(instructions), ctypes.addressof(buffer)))
    _prctl(PR_SET_NO_NEW_PRIVS, 1, 0)
    _prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog))
    return True


def _prctl(option: int, value: int, pointer: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    # prctl is variadic: pass every argument at its full width.
    if libc.prctl(ctypes.c_int(option), ctypes.c_ulong(value), ctypes.c_ulong(pointer), ctypes.c_ulong(0),
                  ctypes.c_ulong(0)) != 0:
        raise SandboxError(f"the kernel refused the worker's seccomp filter (prctl {option}): "
                           f"{os.strerror(ctypes.get_errno())}")


CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REC, MS_PRIVATE = 0x4000, 0x40000


def hide_processes() -> None:
    """Give this process a mount namespace of its own whose /proc is an empty,
    read-only tmpfs. Needs root (CAP_SYS_ADMIN); call before dropping it.

    seccomp cannot filter paths, and a process may open /proc/<pid>/mem of
    any other dumpable process of its own user: an outside review did that
    from the worker to another "nobody" process, which has no sandbox. With
    no /proc the worker sees no process at all (it needs none: its state
    directory and its sockets are already open, and privdrop checks its
    capabilities with capget, not /proc).
    """
    libc = ctypes.CDLL(None, use_errno=True)

    def call(result: int, what: str) -> None:
        if result != 0:
            raise SandboxError(f"the worker could not hide /proc ({what}): {os.strerror(ctypes.get_errno())}")

    call(libc.unshare(ctypes.c_int(CLONE_NEWNS)), "unshare")
    # Private first, so nothing mounted here leaks back into the host's namespace.
    call(libc.mount(None, b"/", None, ctypes.c_ulong(MS_REC | MS_PRIVATE), None), "private mounts")
    flags = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
    call(libc.mount(b"none", b"/proc", b"tmpfs", ctypes.c_ulong(flags), b"size=4k,mode=0555"), "mount")

