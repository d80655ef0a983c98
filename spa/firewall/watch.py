"""Hear nftables ruleset changes as they happen (``nft monitor``'s source).

The kernel multicasts every committed nftables change (new or deleted
table, chain, rule, set, element) to the NFNLGRP_NFTABLES group of
NETLINK_NETFILTER sockets. The daemon does not parse these messages: any
message only means "look now", and it then runs the backend's cheap
``damage()`` check instead of waiting for its once-a-second tick. If the
socket cannot be opened or its queue overflows, nothing is lost but speed:
the tick still runs.
"""

from __future__ import annotations

import socket

from .netlink import NETLINK_NETFILTER

NFNLGRP_NFTABLES = 7  # <linux/netfilter/nfnetlink.h>
RECEIVE_BUFFER = 1 << 16


class NftWatch:
    """A non-blocking netlink socket subscribed to nftables change notifications."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                                  NETLINK_NETFILTER)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            self.sock.bind((0, 1 << (NFNLGRP_NFTABLES - 1)))
        except OSError:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self, limit: int = 256) -> bool:
        """Read what is queued (bounded); True if anything changed or may have."""
        heard = False
        for _ in range(limit):
            try:
                if not self.sock.recv(RECEIVE_BUFFER):
                    return heard
            except BlockingIOError:
                return heard
            except OSError:  # ENOBUFS: notifications were lost, so assume a change
                return True
            heard = True
        return True

    def close(self) -> None:
        self.sock.close()
