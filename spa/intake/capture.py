"""The thin I/O of the intake: filtered AF_PACKET sockets, drained in batches.

Why ``AF_PACKET``: it sees a packet as it arrives, *before* netfilter, so a
knock to a port the firewall drops (the usual case: the knock port is hidden
too) is still heard, and no listening socket betrays the server. Why
``SOCK_DGRAM``: the kernel strips the link-layer header, so every packet
starts at its IP header whatever the interface (Ethernet, loopback, tun, ...).

How a socket is opened, in this order, so that no unfiltered packet is ever
queued to us:

1. ``socket(AF_PACKET, SOCK_DGRAM, 0)``: protocol 0 receives nothing yet;
2. ``PACKET_IGNORE_OUTGOING``: our own replies, and the outgoing copy of every
   loopback packet, are not delivered to us;
3. a large receive buffer (``SO_RCVBUFFORCE``, else ``SO_RCVBUF``) so bursts
   wait in the kernel instead of being dropped;
4. the BPF filter from :mod:`spa.intake.bpf`, then ``SO_LOCK_FILTER``: from
   now on nobody holding the socket can detach or replace that filter;
5. only then ``bind`` to ``ETH_P_ALL`` on one interface (or all of them),
   which is the moment packets start to flow.

The sockets are opened with privilege (CAP_NET_RAW) and remain readable after
the process drops it: nothing here re-opens or re-binds anything later. The
kernel checks that privilege only when a socket is made, so a process that
inherits one could still reconfigure it, rebind it or send on it; the lock
covers the filter, and the worker's seccomp filter (spa/daemon/sandbox.py)
the rest.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
from dataclasses import dataclass

from spa.errors import SpaError

from .bpf import Wanted, attach, compile_filter

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_IGNORE_OUTGOING = 23  # Linux 4.20+
SO_LOCK_FILTER = 44  # asm-generic/socket.h (Linux 3.9+); not exported by Python's socket module
SO_RCVBUFFORCE = 33  # not exported by Python's socket module
SNAPLEN = 2048  # a knock is far shorter; longer packets are cut and then refused by parse()

_libc = ctypes.CDLL(None, use_errno=True)


class CaptureError(SpaError):
    """Packets cannot be captured (privilege, interface, kernel), in one line."""


@dataclass(frozen=True)
class CaptureStatistics:
    """Counted by the kernel since the previous call: packets that passed the
    filter (``matched``), and how many of those it dropped because the
    receive queue was full (``dropped``, included in ``matched``)."""

    matched: int
    dropped: int


class Capture:
    """One filtered ``AF_PACKET`` socket per interface, or one for all.

    ``interfaces`` names the interfaces to hear (an empty tuple: every
    interface, present and future). ``rcvbuf`` is the receive buffer asked
    for per socket; without CAP_NET_ADMIN the kernel caps it at
    ``net.core.rmem_max``, silently.
    """

    def __init__(self, wanted: Wanted, interfaces: tuple[str, ...] = (), rcvbuf: int = 8 << 20) -> None:
        program = compile_filter(wanted, SNAPLEN)
        self._names: dict[socket.socket, str] = {}
        try:
            for name in dict.fromkeys(interfaces) or ("",):
                sock = _open(program, name, rcvbuf)
                self._names[sock] = name or "all interfaces"
        except BaseException:
            self.close()
            raise

    def sockets(self) -> list[socket.socket]:
        """The non-blocking sockets, to register with a selector."""
        return list(self._names)

    def drain(self, sock: socket.socket, limit: int = 256) -> list[bytes]:
        """Read up to ``limit`` queued packets from ``sock`` without blocking.

        Each is an IP packet (IP header first), at most SNAPLEN bytes. An
        interface going down reports ENETDOWN once; that ends this batch and
        the socket hears the interface again when it comes back up.
        """
        packets: list[bytes] = []
        append = packets.append
        recv = sock.recv
        try:
            for _ in range(limit):
                append(recv(SNAPLEN))
        except BlockingIOError:
            pass
        except OSError as error:
            if error.errno != errno.ENETDOWN:
                name = self._names.get(sock, "an unknown socket")
                raise CaptureError(f"capturing on {name} failed: {error.strerror or error}") from error
        return packets

    def statistics(self) -> CaptureStatistics:
        """Packets matched and dropped (queue full) since the last call, all sockets.

        Reading resets the kernel's counters. A growing ``dropped`` means
        packets arrive faster than the caller drains them.
        """
        matched = dropped = 0
        for sock in self._names:
            # tpacket_stats: the kernel already adds drops into tp_packets.
            packets, drops = struct.unpack("=II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
            matched += packets
            dropped += drops
        return CaptureStatistics(matched, dropped)

    def close(self) -> None:
        """Close every socket; safe to call twice."""
        while self._names:
            sock, _ = self._names.popitem()
            sock.close()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open(program: list[tuple[int, int, int, int]], name: str, rcvbuf: int) -> socket.socket:
    """Open, configure, filter and only then bind one socket (see the module doc)."""
    index = _index(name) if name else 0
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
    except PermissionError:
        raise CaptureError("capturing packets needs root or CAP_NET_RAW") from None
    except OSError as error:
        raise CaptureError(f"cannot open a packet socket: {error.strerror or error}") from None
    try:
        try:
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        except OSError as error:
            raise CaptureError(f"this kernel lacks PACKET_IGNORE_OUTGOING (Linux 4.20+): {error.strerror}") from None
        set_receive_buffer(sock, rcvbuf)
        try:
            attach(sock, program)
            sock.setsockopt(socket.SOL_SOCKET, SO_LOCK_FILTER, 1)
        except OSError as error:
            raise CaptureError(f"the kernel refused the packet filter: {error.strerror or error}") from None
        _bind(sock, index, name)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _index(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except (OSError, ValueError):
        raise CaptureError(f"cannot capture on {name!r}: no such network interface") from None


def set_receive_buffer(sock: socket.socket, size: int) -> None:
    """Ask for a ``size``-byte receive queue, past ``net.core.rmem_max`` when privileged."""
    # SO_RCVBUFFORCE passes net.core.rmem_max but needs CAP_NET_ADMIN; without
    # it the plain option still gives what the system allows, which is enough
    # to run, so no error.
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def _bind(sock: socket.socket, index: int, name: str) -> None:
    """bind() to ETH_P_ALL on interface ``index`` (0: all interfaces).

    Python's own AF_PACKET bind wants an interface name and cannot say "all
    interfaces", so struct sockaddr_ll is built here and bound by index.
    """
    address = struct.pack("=HHiHBB8s", socket.AF_PACKET, socket.htons(ETH_P_ALL), index, 0, 0, 0, b"")
    if _libc.bind(sock.fileno(), address, len(address)) != 0:
        code = ctypes.get_errno()
        where = f"interface {name!r}" if name else "all interfaces"
        raise CaptureError(f"cannot capture on {where}: {os.strerror(code)}")
