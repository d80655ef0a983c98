"""DNS over TCP in the worker's event loop: the connections and what each owes.

Each client has an inbox (bytes that are not yet a whole framed message)
and an outbox (answers the kernel has not taken yet). Sockets are
non-blocking, so a send may take only part of an answer: the rest waits in
the outbox and goes out when the socket is writable. While a client's
outbox holds anything, its queries are not read (the kernel's window then
slows the client down), so what we keep per client stays bounded: one
read's worth of answers, at most ``OUTBOX_LIMIT`` bytes, or the client goes.

A selector event names the client object itself, not its file number: a
client closed earlier in the same batch of events (evicted to make room,
say) is recognised as closed, and a new socket that got its number is never
mistaken for it.
"""

from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from spa.carriers import dns

TCP_CLIENTS = 64  # DNS-over-TCP connections served at once
TCP_IDLE = 10.0  # seconds a DNS-over-TCP client may stay silent (or not read our answers)
TCP_READ = 4096
OUTBOX_LIMIT = 64 * 1024  # bytes of unsent answers a client may leave us holding


@dataclass(eq=False)  # compared and hashed by identity: one object per connection
class TcpClient:
    sock: socket.socket
    peer: socket._RetAddress
    deadline: float
    inbox: bytearray = field(default_factory=bytearray)
    outbox: bytearray = field(default_factory=bytearray)
    closed: bool = False


class TcpClients:
    """The DNS-over-TCP clients of one worker, registered with its selector.

    ``answer`` turns one message into a query (the worker counts it);
    ``heard`` is then told the token label of each answered query, after the
    answer went out, so a valid token is not answered later than junk.
    """

    def __init__(self, selector: selectors.BaseSelector, answer: Callable[[bytes], dns.Query],
                 heard: Callable[[str, socket._RetAddress], object]) -> None:
        self.selector = selector
        self.answer = answer
        self.heard = heard
        self.clients: set[TcpClient] = set()

    def __len__(self) -> int:
        return len(self.clients)

    def accept(self, listener: socket.socket) -> None:
        """One new connection; under a connection flood the least recently active client makes room."""
        try:
            sock, peer = listener.accept()
        except OSError:
            return
        if len(self.clients) >= TCP_CLIENTS:
            self.drop(min(self.clients, key=lambda c: c.deadline))
        sock.setblocking(False)
        client = TcpClient(sock, peer, time.time() + TCP_IDLE)
        self.clients.add(client)
        self.selector.register(sock, selectors.EVENT_READ, client)

    def event(self, client: TcpClient, events: int) -> None:
        """``client``'s socket is readable or writable (or it was closed earlier in this batch)."""
        if not client.closed and events & selectors.EVENT_WRITE:
            self._flush(client)
        if not client.closed and events & selectors.EVENT_READ:
            self._read(client)

    def expire(self, now: float) -> None:
        for client in [c for c in self.clients if c.deadline < now]:
            self.drop(client)

    def drop(self, client: TcpClient) -> None:
        """Close ``client``; safe to call for one already closed."""
        self.clients.discard(client)
        if client.closed:
            return
        client.closed = True
        try:
            self.selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        try:
            client.sock.close()
        except OSError:
            pass

    def close(self) -> None:
        for client in list(self.clients):
            self.drop(client)

    def _read(self, client: TcpClient) -> None:
        try:
            data = client.sock.recv(TCP_READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.drop(client)
            return
        client.deadline = time.time() + TCP_IDLE
        client.inbox += data
        for message in dns.read_tcp(client.inbox):
            query = self.answer(message)
            if query.response is None or len(client.outbox) > OUTBOX_LIMIT:
                # Not DNS we answer, or a client that sends without reading.
                self.drop(client)
                return
            client.outbox += dns.frame_tcp(query.response)
            self._flush(client)
            if client.closed:
                return
            if query.label:
                self.heard(query.label, client.peer)

    def _flush(self, client: TcpClient) -> None:
        """Send what the kernel takes now; wait to be writable for the rest (and read nothing meanwhile)."""
        if client.outbox:
            try:
                sent = client.sock.send(client.outbox)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.drop(client)
                return
            if sent:
                del client.outbox[:sent]
                client.deadline = time.time() + TCP_IDLE
        wanted = selectors.EVENT_WRITE if client.outbox else selectors.EVENT_READ
        if self.selector.get_key(client.sock).events != wanted:
            self.selector.modify(client.sock, wanted, client)

