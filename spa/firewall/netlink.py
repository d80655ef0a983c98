"""A grant as one raw nf_tables netlink batch: the fast path of the nftables backend.

libnftables parses its text command, fetches the ruleset cache from the
kernel (several netlink dumps) and only then sends the batch; on a server
that was idle that costs 0.3-1 ms, on every knock. A grant is always the
same three set-element messages, so they are built here directly (pure
code, :func:`grant_batch`) and sent on libnftables' *own* netlink socket
(:class:`ElementWriter`): the grant table is owned by that socket (``flags
owner``), and the kernel refuses changes to an owned table from any other.

Anything unexpected (no such socket, a kernel error, a short reply) raises
:class:`NetlinkError`, and the backend falls back to the text path, which
then reports a problem in nft's own words.
"""

from __future__ import annotations

import os
import select
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from spa.core.events import IPAddress, Request

from .base import host

# linux/netlink.h, linux/netfilter/nfnetlink.h, linux/netfilter/nf_tables.h
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_CREATE = 0x400
NLA_F_NESTED = 0x8000
NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
NFT_MSG_NEWSETELEM = 12
NFT_MSG_DELSETELEM = 14
NFTA_SET_ELEM_LIST_TABLE = 1
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY = 1
NFTA_SET_ELEM_TIMEOUT = 4
NFTA_SET_ELEM_USERDATA = 6
NFTA_DATA_VALUE = 1
NFTNL_UDATA_SET_ELEM_COMMENT = 0  # libnftnl's user-data tag, which nft reads back
FAMILIES = {"inet": 1, "ip": 2, "ip6": 10}

REPLY_WAIT = 1.0  # seconds; the kernel answers a batch before sendmsg returns


class NetlinkError(Exception):
    """The fast path could not apply a batch; use the text path instead."""


def _align(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _attr(kind: int, value: bytes) -> bytes:
    return _align(struct.pack("=HH", 4 + len(value), kind) + value)


def _nest(kind: int, *attrs: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(attrs))


def _message(kind: int, flags: int, seq: int, family: int, body: bytes, res_id: int = 0) -> bytes:
    payload = struct.pack("!BBH", family, 0, res_id) + body  # nfgenmsg: family, version 0, res_id (BE)
    return struct.pack("=IHHII", 16 + len(payload), kind, flags, seq, 0) + payload


def element_key(address: IPAddress, request: Request) -> bytes:
    """``address . inet_proto . inet_service`` as the kernel stores it: each
    field in network order, padded to a 4-byte register."""
    return host(address).packed + struct.pack("!B3x", request.proto_number) + struct.pack("!H2x", request.port)


@dataclass(frozen=True)
class Batch:
    """Bytes to send, and the sequence numbers whose acknowledgements prove it applied."""

    data: bytes
    acks: tuple[int, ...]


def grant_batch(family: str, table: str, set_name: str, key: bytes, seconds: int, comment: str, seq: int) -> Batch:
    """add, delete, add of one timed element, in one transaction (as nft_render.grant_commands).

    The first add makes the delete safe for a new element; the delete drops an
    older one so that the last add sets a fresh timeout and comment.
    """
    proto = FAMILIES[family]
    names = (_attr(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0")
             + _attr(NFTA_SET_ELEM_LIST_SET, set_name.encode() + b"\0"))
    key_attr = _nest(NFTA_SET_ELEM_KEY, _attr(NFTA_DATA_VALUE, key))
    note = comment.encode() + b"\0"
    full = _nest(NFTA_LIST_ELEM,
                 key_attr,
                 _attr(NFTA_SET_ELEM_TIMEOUT, struct.pack("!Q", seconds * 1000)),
                 _attr(NFTA_SET_ELEM_USERDATA, struct.pack("=BB", NFTNL_UDATA_SET_ELEM_COMMENT, len(note)) + note))
    bare = _nest(NFTA_LIST_ELEM, key_attr)
    kind_new = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM
    kind_del = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELSETELEM
    acked = NLM_F_REQUEST | NLM_F_ACK
    seqs = (seq + 1, seq + 2, seq + 3)
    data = b"".join((
        _message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0, b"", NFNL_SUBSYS_NFTABLES),
        _message(kind_new, acked | NLM_F_CREATE, seqs[0], proto, names + _nest(NFTA_SET_ELEM_LIST_ELEMENTS, full)),
        _message(kind_del, acked, seqs[1], proto, names + _nest(NFTA_SET_ELEM_LIST_ELEMENTS, bare)),
        _message(kind_new, acked | NLM_F_CREATE, seqs[2], proto, names + _nest(NFTA_SET_ELEM_LIST_ELEMENTS, full)),
        _message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq + 4, 0, b"", NFNL_SUBSYS_NFTABLES),
    ))
    return Batch(data, seqs)


def acknowledgements(data: bytes) -> Iterator[tuple[int, int]]:
    """(sequence number, error) of each NLMSG_ERROR in ``data``; error 0 is an ack."""
    offset = 0
    while offset + 16 <= len(data):
        length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", data, offset)
        if length < 16 or offset + length > len(data):
            raise NetlinkError("truncated netlink reply")
        if kind == NLMSG_ERROR:
            if length < 20:
                raise NetlinkError("truncated netlink error")
            (error,) = struct.unpack_from("=i", data, offset + 16)
            yield seq, -error
        offset += (length + 3) & ~3


def netfilter_socket_fds() -> list[int]:
    """Descriptors of this process's NETLINK_NETFILTER sockets (from /proc)."""
    inodes: dict[int, int] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes[int(target[8:-1])] = int(name)
    found = []
    with open("/proc/self/net/netlink", encoding="ascii") as table:
        next(table)
        for line in table:
            fields = line.split()
            if len(fields) >= 10 and fields[1] == str(NETLINK_NETFILTER) and int(fields[-1]) in inodes:
                found.append(inodes[int(fields[-1])])
    return sorted(found)


class ElementWriter:
    """Sends grant batches on an existing netlink socket (libnftables' own).

    The descriptor is duplicated, never closed under libnftables, and never
    switched to non-blocking (that flag is shared with the original): replies
    are awaited with select and read with MSG_DONTWAIT.
    """

    def __init__(self, fd: int) -> None:
        self._sock = socket.socket(fileno=os.dup(fd))
        if self._sock.family != socket.AF_NETLINK:
            self._sock.detach()
            raise NetlinkError(f"descriptor {fd} is not a netlink socket")
        self._seq = 0x5A000000  # far from libnftables' own counter, to read replies unambiguously

    def apply(self, make: Callable[[int], Batch]) -> None:
        """Send the batch ``make(seq)`` builds; return once the kernel acked all of it."""
        self._seq = (self._seq + 8) & 0x7FFFFFFF
        batch = make(self._seq)
        try:
            self._sock.send(batch.data)
            waiting = set(batch.acks)
            while waiting:
                ready, _, _ = select.select([self._sock], [], [], REPLY_WAIT)
                if not ready:
                    raise NetlinkError("no reply from the kernel")
                for seq, error in acknowledgements(self._sock.recv(65536, socket.MSG_DONTWAIT)):
                    if seq in waiting and error:
                        self._drain()
                        raise NetlinkError(f"kernel refused the grant: {os.strerror(error)}")
                    waiting.discard(seq)
        except OSError as problem:
            raise NetlinkError(f"netlink: {problem}") from problem

    def _drain(self) -> None:
        """Read whatever else the failed batch produced, so libnftables never sees it."""
        while select.select([self._sock], [], [], 0.05)[0]:
            try:
                self._sock.recv(65536, socket.MSG_DONTWAIT)
            except OSError:
                return

    def close(self) -> None:
        self._sock.close()
