"""The unprivileged side: packets in, decisions out. Sockets are inherited.

:class:`Worker` holds the per-packet logic (no socket calls; grants go to a
callable) so tests can feed it bytes; :func:`serve` is the event loop that
moves bytes between the inherited sockets and the Worker.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from spa.carriers import dns, icmp, udp
from spa.carriers.sequence import Tracker
from spa.config import Config
from spa.core import addresses
from spa.core.events import Accepted, Decision, Duplicate, IPAddress, Knock, Reason, Rejection, Request
from spa.core.gate import Gate
from spa.core.guesses import Guesses
from spa.core.keyring import Keyring
from spa.core.ledger import Ledger
from spa.core.limits import Buckets
from spa.core.rates import SAVE_EVERY, RateFile
from spa.intake import packet as packets

from . import messages, report
from .contain import COUNTER, Unexpected
from .dns_tcp import TcpClient, TcpClients
from .listeners import Listeners

log = logging.getLogger("spa")

ICMP_PROTOCOLS = (1, 58)
TCP, UDP = 6, 17
JUNK_REPORT_EVERY = 60.0  # seconds between "dropped N malformed" lines
STATS_EVERY = 5.0  # seconds between counter reports to the supervisor
# Rejection lines a second (and at once): anyone can make rejections without a
# key (a name that is no key, through any open resolver), and a journal they
# fill rotates away the lines that matter; warnings have a budget of their own.
LOG_RATE, LOG_BURST = 10.0, 50
WARN_RATE, WARN_BURST = 1.0, 20
# DNS answers over UDP a second per source prefix (/24, /56): the source of a
# UDP query can be forged, so beyond this an answer is a reflection at
# someone else. Over it every other query gets a truncated answer (a real
# resolver then asks over TCP), the rest nothing; knocks are heard all the same.
DNS_RATE, DNS_BURST = 20.0, 100


class Worker:
    """Turns captured packets and DNS queries into decisions and grants."""

    def __init__(self, config: Config, keyring: Keyring, ledger: Ledger, emit: Callable[[messages.Message], None],
                 guesses: Guesses | None = None, rates: RateFile | None = None) -> None:
        self.config = config
        self.gate = Gate(keyring, ledger, config.gate, guesses)
        self.emit = emit
        self.counts: Counter[str] = Counter({COUNTER: 0})  # shown even at zero: it is watched
        self.unexpected = Unexpected(self.counts, "worker")
        timeout = config.sequence.timeout if config.sequence else 10.0
        gate = config.gate
        self.tracker = Tracker(config.statics, timeout, gate.tracked_sources, gate.source_rate, gate.source_burst)
        self.zone = config.dns.served if config.dns else None  # built (and so checked) at load
        self.udp_port = config.udp.port if config.udp else None
        self.sniff_port = config.dns.port if config.dns and config.dns.mode == "sniff" else None
        self._sequence_step: int | None = None
        self._junk_reported = 0
        self._junk_at = 0.0
        self._lines = Buckets(LOG_RATE, LOG_BURST, 2)
        self._warnings = Buckets(WARN_RATE, WARN_BURST, 2)
        self._suppressed_reported = 0
        self._answers = Buckets(DNS_RATE, DNS_BURST, config.gate.tracked_sources)
        self._slip = False
        self.rates = rates
        self._rates_saved = 0.0
        if rates is not None:
            rates.load(self.buckets(), time.time())

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
            if knock is None:
                return self._junk()
            return self.decide((knock,))
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

    def udp_query(self, message: bytes, source: IPAddress, now: float) -> dns.Query:
        """:meth:`dns_query` for a UDP query from ``source``, under response rate limiting.

        ``now`` is monotonic: a wall clock stepped back would silence the server."""
        query = self.dns_query(message)  # counted and read the same either way
        prefix = source.packed[:3] if source.version == 4 else source.packed[:7]
        if query.response is None or self._answers.take(prefix, now):
            return query
        self.counts["dns.rate_limited"] += 1
        self._slip = not self._slip
        if not self._slip:
            return dns.Query(query.label, None)
        assert self.zone is not None
        return dns.answer(message, self.zone, truncate=True)

    def label(self, label: str, source: IPAddress, now: float) -> Decision | None:
        knock = dns.knock(label, source, now)
        if knock is None:
            return self._junk()
        return self.decide((knock,))

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
            budget = self._warnings if rejection.alarm else self._lines
            # Monotonic: a clock stepped back must not silence the log (tests/e2e/test_faults.py).
            if budget.take(0, time.monotonic()):
                log.log(logging.WARNING if rejection.alarm else logging.INFO, line)
            else:
                self.counts["log.suppressed"] += 1
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

    def _junk(self) -> Decision | None:
        """Count a packet that is not a knock; there is no decision (None)."""
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

    def buckets(self) -> dict[str, Buckets]:
        """Every rate limit of this worker, by name (spa.core.rates)."""
        # Not the DNS answer budget: it runs on the monotonic clock, which a reboot starts afresh.
        return {**self.gate.buckets(), **self.tracker.buckets()}

    def save_rates(self, now: float) -> None:
        """Save the rate limits (at a stop, and every few seconds from :meth:`tick`)."""
        if self.rates is None:
            return
        self._rates_saved = now
        try:
            self.rates.save(self.buckets(), now)
        except OSError:
            self.counts["rates.unsaved"] += 1

    def tick(self, now: float) -> None:
        """Once a second or so: sequence table, a summary of junk, the rate limits saved."""
        self._refresh_sequences(now)
        if now - self._rates_saved >= SAVE_EVERY:
            self.save_rates(now)
        malformed = self.gate.counts.get("MALFORMED", 0) + self.counts["junk"]
        if malformed > self._junk_reported and now - self._junk_at >= JUNK_REPORT_EVERY:
            # Plain pings count here too: every echo is read as a possible knock.
            log.info(f"{malformed - self._junk_reported} packets since the last report were not knocks")
            self._junk_reported = malformed
            self._junk_at = now
        suppressed = self.counts["log.suppressed"]
        if suppressed > self._suppressed_reported:
            log.warning(f"{suppressed - self._suppressed_reported} rejections not logged one by one "
                        f"(more than {LOG_RATE:g} a second); their reasons are in the counters (spa status)")
            self._suppressed_reported = suppressed

    def stats(self) -> dict[str, int]:
        merged = Counter(self.counts)
        for outcome, count in self.gate.counts.items():
            merged[f"gate.{outcome.lower()}"] += count
        merged["sequence.sources"] = len(self.tracker)
        merged["sequence.over_budget"] = self.tracker.over_budget
        return dict(merged)


@dataclass
class _Flags:
    stop: bool = False
    report: bool = False


class SupervisorGone(BaseException):
    """The pipe to the supervisor broke: the worker must end, not carry on alone.

    A BaseException on purpose: the event loop contains every Exception one
    event raises, and this one must get past that.
    """


def serve(worker: Worker, listeners: Listeners) -> int:
    """The worker's event loop, until SIGTERM. Returns the exit status."""
    flags = _Flags()
    signal.signal(signal.SIGTERM, lambda *_: setattr(flags, "stop", True))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the supervisor, which stops us
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reloads are the supervisor's business
    signal.signal(signal.SIGUSR1, lambda *_: setattr(flags, "report", True))
    loop = Loop(worker, listeners)
    last_stats = 0.0
    while not flags.stop:
        loop.turn(0.5)
        now = time.time()
        loop.contained("the periodic tick", lambda: worker.tick(now))
        if flags.report:
            flags.report = False
            loop.contained("SIGUSR1", lambda: log.info("counters: " + _counters(worker.stats())))
            last_stats = 0.0
        if now - last_stats >= STATS_EVERY:
            last_stats = now
            loop.contained("the counter report", loop.report)
    worker.save_rates(time.time())  # a reload or a restart stops us first: the next worker reads them
    worker.emit(messages.Stats(worker.stats()))
    loop.close()
    return 0


def _counters(counts: dict[str, int]) -> str:
    return ", ".join(f"{name}={value}" for name, value in sorted(counts.items()))


class Loop:
    """The worker's sockets, and one turn of handling whatever is ready on them.

    Each event (and each packet or query within one) is handled on its own:
    an exception one of them raises is contained (see contain.py) and the
    rest of the batch is still served.
    """

    def __init__(self, worker: Worker, listeners: Listeners) -> None:
        self.worker = worker
        self.capture = listeners.capture
        self.selector = selectors.DefaultSelector()
        self.tcp = TcpClients(self.selector, lambda message: worker.dns_query(message, dns.TCP_SIZE), self._heard)
        if self.capture is not None:
            for sock in self.capture.sockets():
                self.selector.register(sock, selectors.EVENT_READ, "capture")
        for sock in listeners.dns_udp:
            self.selector.register(sock, selectors.EVENT_READ, "dns-udp")
        for sock in listeners.dns_tcp:
            self.selector.register(sock, selectors.EVENT_READ, "dns-tcp")

    def turn(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for events, handle them, then drop idle TCP clients."""
        for key, events in self.selector.select(timeout):
            self._event(key, events)
        self.contained("the idle DNS-over-TCP clients", lambda: self.tcp.expire(time.time()))

    def contained(self, event: str, handle: Callable[[], object]) -> None:
        try:
            handle()
        except Exception as problem:  # noqa: BLE001 - contained: see contain.py
            self.worker.unexpected.caught(event, problem)

    def report(self) -> None:
        """Counters to the supervisor, with the kernel's capture drops since the last report."""
        worker = self.worker
        if self.capture is not None:
            # Kernel-side drops (receive queue full): knocks lost before we saw them.
            lost = self.capture.statistics().dropped
            worker.counts["capture.dropped"] += lost
            if lost:
                log.warning(f"the kernel dropped {lost} captured packets (receive queue full)")
        worker.emit(messages.Stats(worker.stats()))

    def close(self) -> None:
        self.tcp.close()
        self.selector.close()

    def _event(self, key: selectors.SelectorKey, events: int) -> None:
        sock, role = key.fileobj, key.data
        assert isinstance(sock, socket.socket)
        if isinstance(role, TcpClient):
            try:
                self.tcp.event(role, events)
            except Exception as problem:  # noqa: BLE001 - contained: see contain.py
                self.worker.unexpected.caught("a DNS-over-TCP client", problem)
                self.tcp.drop(role)  # in a state nobody planned for: let it go
        elif role == "capture":
            self.contained("captured packets", lambda: self._capture(sock))
        elif role == "dns-udp":
            self.contained("DNS over UDP", lambda: self._dns_udp(sock))
        else:
            self.contained("a DNS-over-TCP connection", lambda: self.tcp.accept(sock))

    def _capture(self, sock: socket.socket) -> None:
        assert self.capture is not None
        worker = self.worker
        for datagram in self.capture.drain(sock):
            try:
                worker.packet(datagram, time.time())
            except Exception as problem:  # noqa: BLE001 - one packet's bug costs that packet only
                worker.unexpected.caught("a captured packet", problem)

    def _dns_udp(self, sock: socket.socket) -> None:
        for _ in range(64):  # bounded: other sockets get their turn in a flood
            try:
                message, peer = sock.recvfrom(4096)
            except OSError:  # BlockingIOError included: nothing more to read
                return
            try:
                self._udp_query(sock, message, peer)
            except Exception as problem:  # noqa: BLE001 - one query's bug costs that query only
                self.worker.unexpected.caught("a DNS query over UDP", problem)

    def _udp_query(self, sock: socket.socket, message: bytes, peer: socket._RetAddress) -> None:
        worker = self.worker
        query = worker.udp_query(message, addresses.from_socket(peer[0]), time.monotonic())
        if query.response is not None:
            try:
                sock.sendto(query.response, peer)
            except OSError:
                worker.counts["dns.send_failed"] += 1
        if query.label:
            self._heard(query.label, peer)

    def _heard(self, label: str, peer: socket._RetAddress) -> None:
        self.worker.label(label, addresses.from_socket(peer[0]), time.time())


def pipe_emitter(fd: int) -> Callable[[messages.Message], None]:
    """Write messages to the supervisor; a dead supervisor ends the worker."""

    def emit(message: messages.Message) -> None:
        data = messages.encode(message)
        view = memoryview(data)
        while view:
            try:
                written = os.write(fd, view)
            except OSError as problem:
                raise SupervisorGone(f"cannot write to the supervisor: {problem.strerror or problem}") from None
            view = view[written:]

    return emit
