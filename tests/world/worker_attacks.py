"""``spa`` with one addition: the real worker tries to misuse its sockets first.

Run as ``python worker_attacks.py serve --config FILE`` (any other spa
command passes straight through). Everything runs as usual: the real
supervisor forks the real worker, which drops root and enters its sandbox
in ``_worker_main``; only at the moment that function hands over to the
event loop, this script first tries, from inside that dropped worker, what
a compromised packet parser would: detach or replace the capture filter,
capture outgoing packets again, go promiscuous, rebind to another
interface, send forged frames, open new sockets, exec, leave its
namespaces. It prints one line, ``worker-attacks: {json}``, mapping each
attempt to ``"ok"`` or the errno name it got, to stderr (the serve log),
then serves normally, so the same daemon can still be knocked.

Nothing here is reachable from the network or installed with spa: it is a
test-side wrapper around the real entry point.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import socket
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spa.cli import main
from spa.daemon import supervisor
from spa.daemon.listeners import Listeners
from spa.intake import bpf

MARK = "worker-attacks: "
# The config of this run (``serve --config FILE``): what a compromised worker would rewrite.
CONFIG = Path(sys.argv[sys.argv.index("--config") + 1]) if "--config" in sys.argv else Path("/nonexistent")
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_IGNORE_OUTGOING = 23
SO_DETACH_FILTER = 27
ETH_P_ALL, ETH_P_IP = 0x0003, 0x0800
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
X32_GETPID = 0x40000000 | 39  # getpid through the x32 door (x86_64 numbering)
IO_URING_SETUP = 425  # the same number on x86_64 and the generic table

_libc = ctypes.CDLL(None, use_errno=True)


def outcome(attempt: Callable[[], object]) -> str:
    """'ok' if ``attempt`` went through, else the name of the errno it got."""
    try:
        attempt()
    except OSError as problem:
        return errno.errorcode.get(problem.errno or 0, str(problem.errno))
    return "ok"


def _libc_call(result: int) -> None:
    if result == -1:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def in_child(attempt: Callable[[], object]) -> str:
    """Run ``attempt`` in a forked child (it may replace or move the process):
    the child exits with the errno it got, 0 if it went through."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            attempt()
        except OSError as problem:
            code = problem.errno or 255
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return "ok" if code == 0 else errno.errorcode.get(code, str(code))


def _forged_frame() -> bytes:
    """An IPv4/UDP packet from an address that is not ours (10.77.1.99 to alice)."""
    payload = b"forged"
    udp = struct.pack("!HHHH", 4444, 4444, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                         socket.inet_aton("10.77.1.99"), socket.inet_aton("10.77.1.2"))
    return header + udp


def attempts(listeners: Listeners, interface: str, index: int) -> dict[str, str]:
    """Each attack the worker must not be able to make, and what it must still do.

    ``interface`` (number ``index``) is a link of this host to spoof and sniff on.
    """
    assert listeners.capture is not None
    capture = listeners.capture.sockets()[0]
    fd = capture.fileno()
    frame = _forged_frame()
    to = (interface, ETH_P_IP, 0, 1, b"\xff" * 6)
    accept_all = [(bpf.RET_K, 0, 0, 0x40000)]
    membership = struct.pack("=iHH8s", index, PACKET_MR_PROMISC, 0, b"")
    dns = listeners.dns_udp[0] if listeners.dns_udp else None

    def dup_and_send() -> None:
        copy = os.dup(fd)
        try:
            os.write(copy, frame)
        finally:
            os.close(copy)

    def exec_true() -> None:
        os.execv("/bin/true", ["true"])

    found: dict[str, str] = {
        "detach filter": outcome(lambda: capture.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)),
        "replace filter": outcome(lambda: bpf.attach(capture, accept_all)),
        "capture outgoing": outcome(lambda: capture.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 0)),
        "promiscuous": outcome(lambda: capture.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, membership)),
        "rebind": outcome(lambda: capture.bind(("lo", ETH_P_ALL))),
        "forge sendto": outcome(lambda: capture.sendto(frame, to)),
        "forge sendmsg": outcome(lambda: capture.sendmsg([frame], [], 0, to)),
        "forge write": outcome(lambda: os.write(fd, frame)),
        "forge through dup": outcome(dup_and_send),
        "new packet socket": outcome(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close()),
        "new netlink socket": outcome(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close()),
        "new udp socket": outcome(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()),
        "execve": in_child(exec_true),
        "unshare": in_child(lambda: _libc_call(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNET))),
        "io_uring": outcome(lambda: _libc_call(_libc.syscall(IO_URING_SETUP, 1, ctypes.create_string_buffer(120)))),
        "x32 syscall": outcome(lambda: _libc_call(_libc.syscall(X32_GETPID))),
        # Dumpable, any process of the worker's user could take its capture socket (pidfd_getfd).
        "become dumpable": outcome(lambda: _libc_call(_libc.prctl(4, 1, 0, 0, 0))),
        # Another process's memory goes through /proc (seccomp cannot filter paths): gone when started as root.
        "see other processes": outcome(lambda: open("/proc/1/status").close()),
        # What a reload or restart would then load: the worker must not be able to change it.
        "change the config": outcome(lambda: open(CONFIG, "a").close()),
        "change the server secret": outcome(lambda: open(CONFIG.parent / "server.secret", "a").close()),
        "add a key": outcome(lambda: open(CONFIG.parent / "keys" / "mallory.toml", "x").close()),
        # What the worker must still do: read its capture, count its drops, answer DNS.
        "may read capture": outcome(lambda: capture.recv(2048)),
        "may read statistics": outcome(lambda: capture.getsockopt(SOL_PACKET, 6, 8)),
    }
    if dns is not None:
        found["dns socket option"] = outcome(lambda: dns.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1))
        found["may answer dns"] = outcome(lambda: dns.sendto(b"\0" * 12, ("127.0.0.1", 9)))
    return found


def _attacking(serve: Callable[..., int]) -> Callable[..., int]:
    # Looked up now, in the supervisor: the sandboxed worker cannot open the netlink socket it takes.
    interface = next(name for _, name in socket.if_nameindex() if name != "lo")
    index = socket.if_nametoindex(interface)

    def attacked(*args: Any, **kwargs: Any) -> int:
        listeners = next(a for a in (*args, *kwargs.values()) if isinstance(a, Listeners))
        print(MARK + json.dumps(attempts(listeners, interface, index)), file=sys.stderr, flush=True)
        return serve(*args, **kwargs)

    return attacked


if __name__ == "__main__":
    supervisor.serve = _attacking(supervisor.serve)  # type: ignore[assignment]
    sys.exit(main(sys.argv[1:]))
