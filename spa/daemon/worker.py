"""The unprivileged side: packets in, decisions out. Sockets are inherited.

:class:`Worker` holds the per-packet logic (no socket calls; grants go to a
callable) so tests can feed it bytes; :func:`serve` is the event loop that
moves bytes between the inherited sockets and the Worker.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import selectors
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from spa.carriers import dns, icmp, udp
from spa.carriers.sequence import Tracker
from spa.core.config import Config
from spa.core.events import Accepted, Decision, Duplicate, IPAddress, Knock, Reason, Rejection, Request
from spa.core.gate import Gate
from spa.core.keyring import Keyring
from spa.core.ledger import Ledger
from spa.intake import packet as packets

from . import messages, report
from .listeners import Listeners

log = logging.getLogger("spa")

ICMP_PROTOCOLS = (1, 58)
TCP, UDP = 6, 17
JUNK_REPORT_EVERY = 60.0  # seconds between "dropped N malformed" lines
STATS_EVERY = 5.0  # seconds between counter reports to the supervisor
TCP_CLIENTS = 64  # DNS-over-TCP connections served at once
TCP_IDLE = 10.0  # seconds a DNS-over-TCP client may stay silent
TCP_READ = 4096


class Worker:
    """Turns captured packets and DNS queries into decisions and grants."""

    def __init__(self, config: Config, keyring: Keyring, ledger: Ledger, emit: Callable[[messages.Message], None]) -> None:
        self.config = config
        self.gate = Gate(keyring, ledger, config.gate)
        self.emit = emit
        self.counts: Counter[str] = Counter()
        timeout = config.sequence.timeout if config.sequence else 10.0
        self.tracker = Tracker(config.statics, timeout, config.gate.tracked_sources)
        self.zone = (
            dns.Zone.build(config.dns.zone, config.dns.nameservers, config.dns.addresses, config.dns.ttl)
            if config.dns else None
        )
        self.udp_port = config.udp.port if config.udp else None
        self.sniff_port = config.dns.port if config.dns and config.dns.mode == "sniff" else None
        self._sequence_step: int | None = None
        self._junk_reported = 0
        self._junk_at = 0.0

    # -- input -------------------------------------------------------------

    def packet(self, datagram: bytes, now: float) -> Decision | None:
        """One captured IP packet; the decision it led to, if it was a knock."""
        parsed = packets.parse(datagram)
        if parsed is None:
            self.counts["packets.unparsed"] += 1
            return None
        protocol, port, source = parsed.protocol, parsed.port, parsed.source
        if protocol in ICMP_PROTOCOLS:
            if self.config.icmp is None:
                return None
            self.counts["packets.icmp"] += 1
            return self.decide(icmp.knocks(parsed.payload, source, now))
        if protocol == UDP and port == self.udp_port:
            self.counts["packets.udp"] += 1
            knock = udp.knock(parsed.payload, source, now)
            return self._junk() if knock is None else self.decide((knock,))
        if protocol == UDP and port == self.sniff_port and self.zone is not None:
            self.counts["packets.dns"] += 1
            label = dns.sniff(parsed.payload, self.zone)
            return self.label(label, source, now) if label else None
        if protocol in (TCP, UDP):
            self.counts["packets.sequence"] += 1
            request = Request("tcp" if protocol == TCP else "udp", port) if port else None
            if request is None:
                return None
            self._refresh_sequences(now)
            decision = None
            for knock in self.tracker.hit(source, request, now):
                decision = self.decide((knock,))
            return decision
        return None

    def dns_query(self, message: bytes, max_size: int = dns.UDP_SIZE) -> dns.Query:
        """Our answer to a DNS query on port 53. Send it *before* calling :meth:`label`:
        the reply then cannot take longer for a valid token than for junk."""
        assert self.zone is not None
        self.counts["packets.dns"] += 1
        query = dns.answer(message, self.zone, max_size)
        if query.response is None:
            # Not a query we answer (truncated, a response, a pointer loop, ...):
            # silence on the wire, but counted, so a junk flood shows up in status.
            self.counts["dns.unanswered"] += 1
        return query

    def label(self, label: str, source: IPAddress, now: float) -> Decision | None:
        knock = dns.knock(label, source, now)
        return self._junk() if knock is None else self.decide((knock,))

    # -- deciding ----------------------------------------------------------

    def decide(self, candidates: tuple[Knock, ...] | list[Knock]) -> Decision | None:
        """Try each reading of one packet until the gate accepts one; log once."""
        if not candidates:
            return self._junk()
        rejections: list[Rejection] = []
        for knock in candidates:
            decision = self.gate.decide(knock)
            if isinstance(decision, Accepted):
                return self._release(decision, knock.received)
            if isinstance(decision, Duplicate):
                return decision
            rejections.append(decision)
        rejection = report.most_telling(rejections)
        line = report.describe(rejection)
        if line:
            log.info(line)
        return rejection

    def _release(self, decision: Accepted, received: float) -> Decision:
        """Send the grants, then make their ledger records durable, then say so.

        The supervisor re-checks the grants while the fsync runs (the two
        slowest steps of a knock overlap) but applies them only on Synced:
        a token whose record could not be made durable opens nothing.
        """
        for grant in decision.grants:
            self.emit(messages.Timed(grant, received))
        try:
            self.gate.ledger.sync()
        except OSError as problem:
            self.emit(messages.Discard())
            refusal = Rejection(Reason.STATE_UNWRITABLE, decision.source, decision.carrier,
                                f"cannot make the replay record durable: {problem}", decision.key)
            log.info(report.describe(refusal))
            return refusal
        self.emit(messages.Synced())
        log.info(report.describe(decision))
        return decision

    def _junk(self) -> None:
        self.counts["junk"] += 1
        return None

    # -- housekeeping --------------------------------------------------------

    def _refresh_sequences(self, now: float) -> None:
        """Keep the tracker's one-time sequence table current (it changes each step)."""
        if self.config.sequence is None:
            return
        step = self.config.gate.sequence.step_at(now)
        if step != self._sequence_step:
            self._sequence_step = step
            self.tracker.set_otp(self.gate.sequences(now))

    def tick(self, now: float) -> None:
        """Once a second or so: sequence table, and a summary of junk."""
        self._refresh_sequences(now)
        malformed = self.gate.counts.get("MALFORMED", 0) + self.counts["junk"]
        if malformed > self._junk_reported and now - self._junk_at >= JUNK_REPORT_EVERY:
            # Plain pings count here too: every echo is read as a possible knock.
            log.info(f"{malformed - self._junk_reported} packets since the last report were not knocks")
            self._junk_reported = malformed
            self._junk_at = now

    def stats(self) -> dict[str, int]:
        merged = Counter(self.counts)
        for outcome, count in self.gate.counts.items():
            merged[f"gate.{outcome.lower()}"] += count
        merged["sequence.sources"] = len(self.tracker)
        return dict(merged)


def _address(text: str) -> IPAddress:
    """A socket's peer address as the gate wants it (no scope, no v4-mapping)."""
    address = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass
class _TcpClient:
    sock: socket.socket
    peer: socket._RetAddress
    deadline: float
    buffer: bytearray = field(default_factory=bytearray)


@dataclass
class _Flags:
    stop: bool = False
    report: bool = False


def serve(worker: Worker, listeners: Listeners, pipe: int) -> int:
    """The worker's event loop, until SIGTERM. Returns the exit status."""
    flags = _Flags()
    signal.signal(signal.SIGTERM, lambda *_: setattr(flags, "stop", True))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the supervisor, which stops us
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reloads are the supervisor's business
    signal.signal(signal.SIGUSR1, lambda *_: setattr(flags, "report", True))
    selector = selectors.DefaultSelector()
    if listeners.capture is not None:
        for sock in listeners.capture.sockets():
            selector.register(sock, selectors.EVENT_READ, "capture")
    for sock in listeners.dns_udp:
        selector.register(sock, selectors.EVENT_READ, "dns-udp")
    for sock in listeners.dns_tcp:
        selector.register(sock, selectors.EVENT_READ, "dns-tcp")
    clients: dict[int, _TcpClient] = {}
    last_stats = 0.0
    capture = listeners.capture
    while not flags.stop:
        for selected, _ in selector.select(timeout=0.5):
            sock = selected.fileobj
            role = selected.data
            assert isinstance(sock, socket.socket)
            if role == "capture":
                assert capture is not None
                for datagram in capture.drain(sock):
                    worker.packet(datagram, time.time())
            elif role == "dns-udp":
                _serve_udp(worker, sock)
            elif role == "dns-tcp":
                _accept(sock, clients, selector)
            else:
                _serve_tcp(worker, clients, clients[sock.fileno()], selector)
        now = time.time()
        for client in [c for c in clients.values() if c.deadline < now]:
            _drop(client, clients, selector)
        worker.tick(now)
        if flags.report:
            flags.report = False
            log.info("counters: " + ", ".join(f"{k}={v}" for k, v in sorted(worker.stats().items())))
            last_stats = 0.0
        if now - last_stats >= STATS_EVERY:
            last_stats = now
            if capture is not None:
                # Kernel-side drops (receive queue full): knocks lost before we saw them.
                lost = capture.statistics().dropped
                worker.counts["capture.dropped"] += lost
                if lost:
                    log.warning(f"the kernel dropped {lost} captured packets (receive queue full)")
            worker.emit(messages.Stats(worker.stats()))
    worker.emit(messages.Stats(worker.stats()))
    for client in list(clients.values()):
        _drop(client, clients, selector)
    return 0


def _serve_udp(worker: Worker, sock: socket.socket) -> None:
    for _ in range(64):  # bounded: other sockets get their turn in a flood
        try:
            message, peer = sock.recvfrom(4096)
        except OSError:  # BlockingIOError included: nothing more to read
            return
        query = worker.dns_query(message)
        if query.response is None:
            continue
        try:
            sock.sendto(query.response, peer)
        except OSError:
            worker.counts["dns.send_failed"] += 1
        if query.label:
            worker.label(query.label, _address(peer[0]), time.time())


def _accept(listener: socket.socket, clients: dict[int, _TcpClient], selector: selectors.BaseSelector) -> None:
    try:
        sock, peer = listener.accept()
    except OSError:
        return
    if len(clients) >= TCP_CLIENTS:
        # Under a connection flood the oldest idle client makes room.
        oldest = min(clients.values(), key=lambda c: c.deadline)
        _drop(oldest, clients, selector)
    sock.setblocking(False)
    client = _TcpClient(sock, peer, time.time() + TCP_IDLE)
    clients[sock.fileno()] = client
    selector.register(sock, selectors.EVENT_READ, "dns-client")


def _serve_tcp(worker: Worker, clients: dict[int, _TcpClient], client: _TcpClient, selector: selectors.BaseSelector) -> None:
    try:
        data = client.sock.recv(TCP_READ)
    except (BlockingIOError, InterruptedError):
        return
    except OSError:
        data = b""
    if not data:
        _drop(client, clients, selector)
        return
    client.buffer += data
    for message in dns.read_tcp(client.buffer):
        query = worker.dns_query(message, dns.TCP_SIZE)
        if query.response is None:
            _drop(client, clients, selector)
            return
        try:
            client.sock.send(dns.frame_tcp(query.response))
        except OSError:
            _drop(client, clients, selector)
            return
        if query.label:
            worker.label(query.label, _address(client.peer[0]), time.time())
    client.deadline = time.time() + TCP_IDLE


def _drop(client: _TcpClient, clients: dict[int, _TcpClient], selector: selectors.BaseSelector) -> None:
    clients.pop(client.sock.fileno(), None)
    try:
        selector.unregister(client.sock)
    except (KeyError, ValueError):
        pass
    client.sock.close()


def pipe_emitter(fd: int) -> Callable[[messages.Message], None]:
    """Write messages to the supervisor; a dead supervisor ends the worker."""

    def emit(message: messages.Message) -> None:
        data = messages.encode(message)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]

    return emit
