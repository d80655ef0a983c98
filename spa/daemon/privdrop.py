"""Dropping root for good: the worker runs as an unprivileged user.

Order matters: supplementary groups, then the group, then the user (after
setuid a process can no longer change its groups). setuid from root to
another user clears every capability, since the worker never asks to keep
them; no_new_privs then stops any later exec from regaining privilege.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import signal
import struct
from dataclasses import dataclass
from pathlib import Path

from spa.errors import SpaError

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522


class PrivilegeError(SpaError):
    """The worker could not shed its privileges; it must not run then."""


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int


def account(name: str) -> Account:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise PrivilegeError(
            f"user {name!r} does not exist (create it with: useradd --system --no-create-home {name}, "
            "or set [server] user)"
        ) from None
    if entry.pw_uid == 0:
        raise PrivilegeError(f"user {name!r} is root: the packet parser must not run as root")
    return Account(name, entry.pw_uid, entry.pw_gid)


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise PrivilegeError(f"prctl({option}) failed: {os.strerror(ctypes.get_errno())}")


def die_with_parent(parent: int) -> None:
    """Ask the kernel to end this process when its parent (the supervisor) dies.

    Call it again after :func:`drop`: changing the effective or filesystem
    user or group clears the request (prctl(2)), and a worker that outlived
    its supervisor would keep reading knocks that nobody can grant until its
    next write to the pipe fails. Raises if ``parent`` has already gone (the
    request only covers a death after it is made).
    """
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        raise PrivilegeError("the supervisor died before the worker was set to follow it")


def drop(to: Account) -> None:
    """Become ``to`` for good, or raise. A no-op when not running as root."""
    if os.geteuid() != 0:
        return
    os.setgroups([])
    os.setgid(to.gid)
    os.setuid(to.uid)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise PrivilegeError("could regain root after dropping it")
    if own_capabilities() != (0, 0, 0):
        raise PrivilegeError("capabilities remain after dropping root")


def shed_capabilities() -> None:
    """Give up every capability a process not started as root holds, or raise.

    A supervisor run as another user with file or ambient capabilities
    (NET_ADMIN, NET_RAW, ...) has no root to drop, so :func:`drop` does
    nothing, and without this its worker would keep them: enough to make
    new packet or netlink sockets, or to change interfaces through any
    socket's ioctl.
    """
    if os.geteuid() == 0:
        raise PrivilegeError("shed_capabilities is for a process not running as root; use drop")
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    # struct __user_cap_header_struct (the kernel may write its version back), then
    # two struct __user_cap_data_struct (effective, permitted, inheritable), all zero.
    header = ctypes.create_string_buffer(struct.pack("=Ii", LINUX_CAPABILITY_VERSION_3, 0))
    empty = ctypes.create_string_buffer(24)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.capset(header, empty) != 0:
        raise PrivilegeError(f"capset failed: {os.strerror(ctypes.get_errno())}")
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    if any(capabilities("self").values()):
        raise PrivilegeError("capabilities remain after giving them up")


def own_capabilities() -> tuple[int, int, int]:
    """This process's effective, permitted and inheritable sets, from capget(2).

    Not from /proc: the worker has none (sandbox.hide_processes).
    """
    header = ctypes.create_string_buffer(struct.pack("=Ii", LINUX_CAPABILITY_VERSION_3, 0))
    data = ctypes.create_string_buffer(24)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.capget(header, data) != 0:
        raise PrivilegeError(f"capget failed: {os.strerror(ctypes.get_errno())}")
    low_eff, low_perm, low_inh, high_eff, high_perm, high_inh = struct.unpack("=6I", data.raw)
    return low_eff | high_eff << 32, low_perm | high_perm << 32, low_inh | high_inh << 32


def effective_capabilities(pid: int | str = "self") -> int:
    """CapEff of a process, from /proc (0: no capability at all)."""
    return capabilities(pid)["CapEff"]


def capabilities(pid: int | str = "self") -> dict[str, int]:
    """The capability sets a process can use or regain (CapEff, CapPrm, CapInh, CapAmb), from /proc."""
    wanted = ("CapEff", "CapPrm", "CapInh", "CapAmb")
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in wanted:
            found[name] = int(value.split()[0], 16)
    if set(found) != set(wanted):
        raise PrivilegeError("capability sets missing from /proc status")
    return found
