#!/usr/bin/env python3
"""``spa serve`` measured end to end: knock to open per carrier, and valid knocks under junk.

Run as root: ``python3 tests/bench/serve_latency.py [--count N] [--rates 1000,10000,0] [--json]``.
It builds the namespace world of tests/world (server, alice, bob joined by
veth pairs; everything in namespaces it makes and removes, even on Ctrl-C),
starts the echo service on tcp/22 and tcp/2222 and ``spa serve`` with the
nftables backend (made by ``spa init``/``spa keygen`` as tests/e2e does),
then measures two things.

**Knock to open.** For each carrier, ``--count`` knocks from alice, each from
its own address (alice gets 240 extra /32 addresses, and the server permanent
neighbour entries for them, so every measurement starts closed and no ARP
is timed) and with a fresh token. One long-lived helper process inside
alice's namespace (this file, ``--helper``) checks that the port is closed,
takes the time, sends the knock, and then opens a fresh non-blocking TCP
connection to tcp/22 every ``--interval-ms`` (each attempt kept for 5 ms; a
dropped SYN would only be retransmitted after 1 s, so one blocking connect
would measure nothing) until one completes. The carriers:

* ``icmp``        ``ping -c1 -p <token>`` (stock iputils, spawned by the helper)
* ``dns``         ``dig @server <token>.knock.test +tries=1`` (stock, spawned)
* ``udp``         one SPA datagram from the pre-started helper: the floor
* ``sequence``    one-time port sequence: ``knock server p1 p2 p3`` (spawned)
* ``fixed``       knockd-style fixed sequence: ``knock server 7000 8000:udp 9000``

Each knock gives ``total`` (from just before the helper starts the tool or
sends, to the completed connect: includes the stock tool's start-up) and
``wire`` (from the kernel timestamp of the knock's first packet leaving
alice's interface, read by a packet socket in the helper, to the completed
connect: excludes the start-up). All namespaces share one clock.

**Under junk.** The C junk sender (tests/bench/junk.c, built to build/junk
by scripts/setup.sh; ``sendmmsg``, random datagrams of SPA sizes 39-164
bytes, stops by itself after a packet count and a wall-clock limit, or when
told) in alice's namespace floods the UDP knock port at each rate of ``--rates`` (0: as fast as it can), while a
second helper in bob's namespace sends ``--junk-knocks`` valid UDP knocks and
``--junk-icmp`` ping knocks spread over the flood, each from its own address,
and records whether and how fast tcp/22 opened for it. Per rate: junk sent
and its achieved rate, what reached the server's interface, what the
worker parsed (its ``packets.udp`` counter, read with SIGUSR1), what the
kernel dropped from the capture queue (``ss -0 -m``, field ``d``), the
valid knocks' open share and latency, and CPU seconds (``/proc/PID/stat``)
and peak RSS (``VmHWM``) of the supervisor and the worker.

The daemon's per-key grant rate limit is raised out of the way (the bench
measures latency, not limits) and one-time sequences step every 5 s so that
fresh sequences are plentiful; everything else is ``spa init``'s default,
with 3-second grants as in tests/e2e.
"""

from __future__ import annotations

import argparse
import errno
import itertools
import json
import os
import platform
import re
import select
import selectors
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

# spa is imported inside the functions that need it: the helper runs this
# same file inside the namespaces and should start quickly.
HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))  # tests/, for the world package
sys.path.insert(0, str(HERE.parents[2]))  # the checkout, for spa
sys.path.insert(0, str(HERE.parent))  # junk_sender

import junk_sender  # noqa: E402

if TYPE_CHECKING:
    from spa.core.keys import ClientKey
    from spa.core.sequence import SequenceRule

SERVICE = 22  # the protected port every knock opens
UDP_PORT = 62201  # spa's UDP knock port (spa init's default)
FIXED = ("7000", "8000:udp", "9000")  # the [sequences.office] fixed sequence
POOL = range(10, 250)  # host parts of the extra client addresses: 10.77.N.10-249
JUNK_LIMIT_S = 120.0  # a junk sender never runs longer than this
JUNK_LIMIT_PACKETS = 50_000_000
ATTEMPT_S = 0.005  # how long one connect attempt is waited for
CLOSED_WAIT_S = 0.03  # a SYN unanswered this long on a veth pair was dropped
TOOL_WAIT_S = 2.0  # a stock tool still running this long after the measurement is killed
CARRIERS = ("icmp", "dns", "udp", "sequence", "fixed")


# --------------------------------------------------------------------------
# The helper: one process inside a client namespace, driven over stdin/stdout
# --------------------------------------------------------------------------

ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
SO_TIMESTAMPNS = 35
IP_BIND_ADDRESS_NO_PORT = 24
ETH_P_ALL = 0x0003  # outgoing packets reach only ETH_P_ALL taps, never a per-protocol bind
PKTTYPE = (-0x1000 + 4) & 0xFFFFFFFF  # SKF_AD_OFF + SKF_AD_PKTTYPE
PROTOCOL = (-0x1000 + 0) & 0xFFFFFFFF  # SKF_AD_OFF + SKF_AD_PROTOCOL


def outgoing_filter(skip_port: int) -> list[tuple[int, int, int, int]]:
    """Classic BPF: outgoing IPv4 packets, except TCP to ``skip_port`` (the connect attempts)."""
    return [
        (0x20, 0, 0, PKTTYPE),  # ld [pkttype]
        (0x15, 0, 8, PACKET_OUTGOING),  # jeq OUTGOING ? next : reject
        (0x28, 0, 0, PROTOCOL),  # ldh [protocol]: the ethertype
        (0x15, 0, 6, ETH_P_IP),  # jeq IPv4 ? next : reject
        (0x30, 0, 0, 9),  # ldb [9]: IP protocol
        (0x15, 0, 3, 6),  # jeq TCP ? next : accept
        (0xB1, 0, 0, 0),  # ldx 4*([0]&0xf)
        (0x48, 0, 0, 2),  # ldh [x+2]: destination port
        (0x15, 1, 0, skip_port),  # jeq skip_port ? reject : accept
        (0x06, 0, 0, 256),  # accept
        (0x06, 0, 0, 0),  # reject
    ]


class Sniffer:
    """Kernel timestamps of the packets a client sends: when a knock hit the wire."""

    def __init__(self, device: str, skip_port: int) -> None:
        from spa.intake.bpf import attach

        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        attach(self.sock, outgoing_filter(skip_port))
        self.sock.bind((device, ETH_P_ALL))
        self.sock.setblocking(False)

    def stamps(self) -> list[int]:
        """Drain the queue: the kernel send time (ns, CLOCK_REALTIME) of each packet."""
        found: list[int] = []
        for _ in range(100_000):  # bounded; a measurement sends a handful
            try:
                _, ancillary, _, _ = self.sock.recvmsg(64, socket.CMSG_SPACE(16))
            except BlockingIOError:
                break
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    seconds, nanoseconds = struct.unpack("=qq", data[:16])
                    found.append(seconds * 1_000_000_000 + nanoseconds)
        return found


def _attempt(server: str, port: int, source: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    sock.bind((source, 0))
    code = sock.connect_ex((server, port))
    if code not in (errno.EINPROGRESS, 0):
        sock.close()
        raise OSError(code, os.strerror(code))
    return sock


def wait_open(server: str, port: int, source: str, limit: float, interval: float) -> tuple[int | None, int]:
    """Fresh non-blocking connects every ``interval`` s until one completes.

    Returns the time (ns) the first connect completed, or None after
    ``limit`` seconds, and how many attempts were made. Sleeps in select()
    between attempts, so the client does not spin a core the daemon needs.
    """
    pending: dict[socket.socket, float] = {}
    attempts = 0
    now = time.monotonic()
    deadline = now + limit
    next_at = now
    try:
        while now < deadline:
            if now >= next_at:
                pending[_attempt(server, port, source)] = now
                attempts += 1
                next_at = now + interval
            wait = max(0.0, min(next_at, deadline) - time.monotonic())
            _, writable, _ = select.select([], list(pending), [], wait)
            for sock in writable:
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    return time.time_ns(), attempts
                del pending[sock]  # refused or unreachable: keep trying
                sock.close()
            now = time.monotonic()
            for sock, started in list(pending.items()):
                if now - started > ATTEMPT_S:
                    del pending[sock]
                    sock.close()
        return None, attempts
    finally:
        for sock in pending:
            sock.close()


def probe(server: str, port: int, source: str) -> bool:
    """True if one SYN from ``source`` is answered within CLOSED_WAIT_S (the port is open)."""
    with _attempt(server, port, source) as sock:
        _, writable, _ = select.select([], [sock], [], CLOSED_WAIT_S)
        return bool(writable) and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0


class Helper:
    """Knocks and times them from inside one client namespace (see the module doc)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.sniffer = Sniffer(device, SERVICE)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def knock(self, request: dict[str, Any]) -> dict[str, Any]:
        server, source = request["server"], request["source"]
        limit, interval = float(request["limit"]), float(request["interval"])
        # Closed first (a reused address may still hold a grant: wait it out, bounded).
        deadline = time.monotonic() + float(request.get("closed_limit", 5.0))
        while probe(server, SERVICE, source):
            if time.monotonic() > deadline:
                return {"closed_before": False}
            time.sleep(0.1)
        tool: subprocess.Popen[bytes] | None = None
        if "argv" in request:
            # Stock tools pick their own source: route the server's address from ours.
            # (A server beyond a router is reached ``via`` its gateway.)
            via = ["via", request["via"]] if request.get("via") else []
            subprocess.run(["ip", "route", "replace", f"{server}/32", *via, "dev", self.device, "src", source],
                           check=True, capture_output=True, timeout=10)
        payload = bytes.fromhex(request.get("payload", ""))
        if payload:
            self.udp.close()
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.bind((source, 0))
        self.sniffer.stamps()  # forget anything sent before this knock
        start = time.time_ns()
        if payload:
            self.udp.sendto(payload, (server, int(request["port"])))
        else:
            tool = subprocess.Popen(request["argv"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        opened, attempts = wait_open(server, SERVICE, source, limit, interval)
        if tool is not None:
            try:
                tool.wait(TOOL_WAIT_S)
            except subprocess.TimeoutExpired:
                os.kill(tool.pid, signal.SIGKILL)  # ours, by pid
                tool.wait(10)
        sent = [stamp for stamp in self.sniffer.stamps() if stamp >= start]
        wire = min(sent) if sent else None
        reply: dict[str, Any] = {"closed_before": True, "opened": opened is not None, "attempts": attempts,
                                 "start_ns": start, "wire_ns": wire}
        if opened is not None:
            reply["total_ms"] = (opened - start) / 1e6
            reply["wire_ms"] = (opened - wire) / 1e6 if wire is not None else None
        if wire is not None:
            reply["startup_ms"] = (wire - start) / 1e6
        return reply


def helper_main(device: str) -> None:
    helper = Helper(device)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        try:
            reply = {"ok": True, **helper.knock(json.loads(line))}
        except Exception as error:  # report, keep serving: the bench decides
            reply = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        print(json.dumps(reply), flush=True)


# --------------------------------------------------------------------------
# The bench: world, daemon, measurements (runs in the root namespace)
# --------------------------------------------------------------------------


def summary(samples: list[float]) -> dict[str, float | int | None]:
    """Median and p99 (nearest rank: with under 100 samples, the largest) in ms."""
    if not samples:
        return {"n": 0, "median_ms": None, "p99_ms": None}
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return {"n": len(ordered), "median_ms": round(statistics.median(ordered), 3), "p99_ms": round(p99, 3)}


class Remote:
    """The bench's side of one helper or junk process (bounded waits)."""

    def __init__(self, world: Any, host: Any, argv: list[str], ready_wait: float = 15) -> None:
        self.process = subprocess.Popen(host.exec_argv([sys.executable, str(HERE), *argv]),
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        cwd=HERE.parents[2])
        world.adopt(self.process)  # killed by pid when the world closes
        self.selector = selectors.DefaultSelector()
        assert self.process.stdout is not None
        self.selector.register(self.process.stdout, selectors.EVENT_READ)
        if not self.read(ready_wait).get("ready"):
            raise RuntimeError(f"{argv[0]} did not start")

    def read(self, timeout: float) -> dict[str, Any]:
        if not self.selector.select(timeout):
            raise TimeoutError(f"helper {self.process.pid} silent for {timeout} s")
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"helper {self.process.pid} exited ({self.process.poll()})")
        return dict(json.loads(line))

    def ask(self, request: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        reply = self.read(timeout)
        if not reply.get("ok"):
            raise RuntimeError(f"helper: {reply.get('error')}")
        return reply


@dataclass
class ProcessFigures:
    """CPU seconds and memory of one process, from /proc."""

    cpu_s: float
    hwm_mb: float
    rss_mb: float
    pss_mb: float = 0.0  # proportional: pages shared with the other process counted half

    @staticmethod
    def read(pid: int) -> ProcessFigures:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        ticks = int(fields[11]) + int(fields[12])  # utime + stime (fields 14 and 15)
        status = Path(f"/proc/{pid}/status").read_text()

        def kib(name: str) -> float:
            match = re.search(rf"^{name}:\s+(\d+) kB", status, re.M)
            return int(match.group(1)) / 1024 if match else 0.0

        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            match = re.search(r"^Pss:\s+(\d+) kB", rollup, re.M)
            pss = int(match.group(1)) / 1024 if match else 0.0
        except OSError:
            pss = 0.0
        return ProcessFigures(ticks / os.sysconf("SC_CLK_TCK"), round(kib("VmHWM"), 1), round(kib("VmRSS"), 1),
                              round(pss, 1))


@dataclass
class MachineCpu:
    """Seconds all CPUs spent busy, and stolen by the hypervisor, since boot (/proc/stat)."""

    busy_s: float
    steal_s: float

    @staticmethod
    def read() -> MachineCpu:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
        tick = os.sysconf("SC_CLK_TCK")
        return MachineCpu((user + nice + system + irq + softirq) / tick, steal / tick)


@dataclass
class Snapshot:
    """What the daemon and the kernel had counted at one moment."""

    at: float
    counters: dict[str, int]
    supervisor: ProcessFigures
    worker: ProcessFigures
    server_rx: int  # packets received on the server's link to alice
    capture_drops: int  # the capture socket's kernel drop counter (queue full)
    machine: MachineCpu


@dataclass
class Bench:
    """A served world: spa serve, its keys, one helper per client."""

    world: Any
    served: Any
    key: Any
    otp_keys: list[Any]
    rule: Any
    interval: float
    limit: float
    alice: Remote = field(init=False)
    bob: Remote = field(init=False)
    _next: dict[str, Iterator[int]] = field(default_factory=dict)
    _otp_used: set[tuple[str, int]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.alice = Remote(self.world, self.world.alice, ["--helper", "uplink"])
        self.bob = Remote(self.world, self.world.bob, ["--helper", "uplink"])

    # -- addresses -------------------------------------------------------

    def source(self, client: str) -> str:
        """The next of the client's extra addresses, round robin."""
        if client not in self._next:
            self._next[client] = itertools.cycle(POOL)
        index = 1 if client == "alice" else 2
        return f"10.77.{index}.{next(self._next[client])}"

    # -- knocks ------------------------------------------------------------

    def request(self, carrier: str, server: str, source: str) -> dict[str, Any]:
        """The helper request for one fresh knock of ``carrier`` from ``source``."""
        import ipaddress

        from world.daemon import ZONE

        from spa.client import tokens

        address = ipaddress.ip_address(source)
        now = int(time.time())
        base = {"server": server, "source": source, "limit": self.limit, "interval": self.interval}
        if carrier == "icmp":
            pattern = tokens.ping_pattern(tokens.compact_token(self.key, now, address))
            return {**base, "argv": ["ping", "-c", "1", "-W", "1", "-p", pattern, server]}
        if carrier == "dns":
            name = tokens.dns_name(tokens.compact_token(self.key, now, address), ZONE)
            return {**base, "argv": ["dig", f"@{server}", name, "+tries=1", "+time=1"]}
        if carrier == "udp":
            payload = tokens.spa_datagram(self.key, now, source=address)
            return {**base, "payload": payload.hex(), "port": UDP_PORT}
        if carrier == "sequence":
            key, at = self._fresh_sequence()
            ports = tokens.otp_sequence(key, at, self.rule)
            return {**base, "argv": ["knock", server, *map(str, ports)]}
        if carrier == "fixed":
            return {**base, "argv": ["knock", server, *FIXED]}
        raise ValueError(carrier)

    def _fresh_sequence(self) -> tuple[Any, float]:
        """A (key, time) whose one-time sequence was never sent: steps within the window."""
        current = self.rule.step_at(time.time())
        reach = 10  # of the 12 steps either side that a 60 s window with 5 s steps accepts
        for offset in sorted(range(-reach, reach + 1), key=abs):
            for key in self.otp_keys:
                if (key.name, current + offset) not in self._otp_used:
                    self._otp_used.add((key.name, current + offset))
                    return key, (current + offset) * self.rule.step_seconds + 1
        raise RuntimeError("no fresh one-time sequence left: more keys are needed")

    def knock(self, client: str, carrier: str) -> dict[str, Any]:
        server = "10.77.1.1" if client == "alice" else "10.77.2.1"
        remote = self.alice if client == "alice" else self.bob
        reply = remote.ask(self.request(carrier, server, self.source(client)), timeout=self.limit + 30)
        if not reply["closed_before"]:
            raise RuntimeError(f"{carrier}: tcp/{SERVICE} was open before the knock")
        return reply

    # -- daemon figures ----------------------------------------------------

    def counters(self, timeout: float = 5.0) -> dict[str, int]:
        """The worker's counters, logged on SIGUSR1 (sent to the supervisor, as a person would)."""
        before = self.served.log().count("counters: ")
        self.served.signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = [line for line in self.served.log().splitlines() if "counters: " in line]
            if len(lines) > before:
                text = lines[-1].split("counters: ", 1)[1]
                return {name: int(value) for name, value in (item.split("=") for item in text.split(", "))}
            time.sleep(0.05)
        raise TimeoutError("no counters line after SIGUSR1")

    def snapshot(self) -> Snapshot:
        counters = self.counters()
        link = json.loads(self.world.server.run(["ip", "-j", "-s", "link", "show", "client1"]).stdout)[0]
        sockets = self.world.server.run(["ss", "-0", "-m", "-n", "-H"]).stdout
        drops = sum(int(found) for found in re.findall(r"skmem:\(.*?,d(\d+)\)", sockets))
        assert self.served.process is not None
        return Snapshot(time.monotonic(), counters, ProcessFigures.read(self.served.process.pid),
                        ProcessFigures.read(self.served.worker_pid()), int(link["stats64"]["rx"]["packets"]), drops,
                        MachineCpu.read())

    def settle(self, timeout: float = 10.0) -> None:
        """Wait (bounded) until the worker has parsed everything queued to it."""
        deadline = time.monotonic() + timeout
        last = -1
        while time.monotonic() < deadline:
            seen = self.counters().get("packets.udp", 0)
            if seen == last:
                return
            last = seen
            time.sleep(0.3)


def prepare_addresses(world: Any) -> None:
    """240 extra /32 addresses per client, and permanent neighbour entries for them on the server."""
    for index, client, device in ((1, world.alice, "client1"), (2, world.bob, "client2")):
        commands = "".join(f"address add 10.77.{index}.{host}/32 dev uplink\n" for host in POOL)
        subprocess.run(["ip", "-n", client.netns, "-batch", "-"], input=commands, text=True, check=True,
                       capture_output=True, timeout=30)
        link = json.loads(client.run(["ip", "-j", "link", "show", "uplink"]).stdout)[0]
        neighbours = "".join(f"neigh replace 10.77.{index}.{host} lladdr {link['address']} dev {device} "
                             "nud permanent\n" for host in POOL)
        subprocess.run(["ip", "-n", world.server.netns, "-batch", "-"], input=neighbours, text=True, check=True,
                       capture_output=True, timeout=30)


def knock_to_open(bench: Bench, count: int) -> dict[str, Any]:
    """Part 1: ``count`` knocks per carrier from alice; total and from-the-wire latency."""
    results: dict[str, Any] = {}
    for carrier in CARRIERS:
        bench.knock("alice", carrier)  # a first knock to warm caches, not counted
        replies = [bench.knock("alice", carrier) for _ in range(count)]
        opened = [r for r in replies if r["opened"]]
        total = summary([r["total_ms"] for r in opened])
        wire = summary([r["wire_ms"] for r in opened if r.get("wire_ms") is not None])
        startup = summary([r["startup_ms"] for r in replies if r.get("startup_ms") is not None])
        results[carrier] = {
            "knocks": len(replies), "opened": len(opened),
            "median_ms": total["median_ms"], "p99_ms": total["p99_ms"],
            "wire_median_ms": wire["median_ms"], "wire_p99_ms": wire["p99_ms"],
            "startup_median_ms": startup["median_ms"],
            "attempts_median": statistics.median(r["attempts"] for r in replies),
        }
    return results


def under_junk(bench: Bench, rate: int, udp_knocks: int, icmp_knocks: int, spacing: float) -> dict[str, Any]:
    """Part 2, one rate: junk from alice, valid knocks from bob, daemon figures around it."""
    bench.settle()
    before = bench.snapshot()
    # Long enough for every knock to time out, so that all of them are sent under the flood.
    budget = min(JUNK_LIMIT_S, 2.0 + (udp_knocks + icmp_knocks) * (spacing + bench.limit + 0.2))
    count = JUNK_LIMIT_PACKETS if rate <= 0 else int(rate * budget)
    flood = junk_sender.Flood("10.77.1.1", (f"spa:{UDP_PORT}",), rate, budget, count)
    junk = junk_sender.Junk(bench.world, bench.world.alice, flood)
    knocks: list[tuple[str, dict[str, Any]]] = []
    try:
        time.sleep(0.5)  # let the flood reach its pace (and fill a queue, if it will)
        total = udp_knocks + icmp_knocks
        icmp_at = {int((j + 0.5) * total / icmp_knocks) for j in range(icmp_knocks)} if icmp_knocks else set()
        for index in range(total):
            if not junk.running():
                break  # the flood ended (its own time limit): later knocks would not be under junk
            carrier = "icmp" if index in icmp_at else "udp"
            knocks.append((carrier, bench.knock("bob", carrier)))
            time.sleep(spacing)
    finally:
        sender_cpu = ProcessFigures.read(junk.process.pid).cpu_s if junk.running() else None
        sent = junk.finish()  # SIGTERM by pid if still running; it also stops by itself
    bench.settle()
    after = bench.snapshot()
    row: dict[str, Any] = {
        "target_per_s": rate or "max",
        "junk_sent": sent["sent"],
        "junk_seconds": round(sent["seconds"], 2),
        "junk_per_s": round(sent["sent"] / sent["seconds"]) if sent["seconds"] > 0 else 0,
        "server_rx": after.server_rx - before.server_rx,
        "worker_parsed_udp": after.counters.get("packets.udp", 0) - before.counters.get("packets.udp", 0),
        "capture_dropped": after.capture_drops - before.capture_drops,
        "worker_parsed_per_s": 0,
        "wall_s": round(after.at - before.at, 2),
        "supervisor_cpu_s": round(after.supervisor.cpu_s - before.supervisor.cpu_s, 2),
        "worker_cpu_s": round(after.worker.cpu_s - before.worker.cpu_s, 2),
        "sender_cpu_s": round(sender_cpu, 2) if sender_cpu is not None else None,
        # Everything busy on the machine (ours, the kernel's softirq work, anyone else's) and
        # what the hypervisor stole: a shared machine shows here.
        "machine_busy_cpu_s": round(after.machine.busy_s - before.machine.busy_s, 2),
        "machine_steal_s": round(after.machine.steal_s - before.machine.steal_s, 2),
        "loadavg_1m": float(Path("/proc/loadavg").read_text().split()[0]),
        "supervisor_hwm_mb": after.supervisor.hwm_mb,
        "worker_hwm_mb": after.worker.hwm_mb,
    }
    if sent["seconds"] > 0:
        row["worker_parsed_per_s"] = round(row["worker_parsed_udp"] / sent["seconds"])
    for carrier in ("udp", "icmp"):
        replies = [reply for kind, reply in knocks if kind == carrier]
        opened = [r for r in replies if r["opened"]]
        figures = summary([r["wire_ms"] if r.get("wire_ms") is not None else r["total_ms"] for r in opened])
        row[f"{carrier}_knocks"] = len(replies)
        row[f"{carrier}_opened"] = len(opened)
        row[f"{carrier}_median_ms"] = figures["median_ms"]
        row[f"{carrier}_p99_ms"] = figures["p99_ms"]
    return row


def fsync_probe(directory: Path, count: int = 20, gap: float = 0.03) -> float:
    """Median ms of one small append + fsync in ``directory``, ``gap`` s apart.

    The replay ledger does exactly this before every grant (never for fixed
    sequences, which have no token), on the same filesystem; the disk's
    mood shows in every token carrier's latency, so each run records it.
    """
    path = directory / "fsync-probe"
    samples = []
    with open(path, "ab") as handle:
        for _ in range(count):
            time.sleep(gap)
            start = time.perf_counter()
            handle.write(b"0" * 69 + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
            samples.append((time.perf_counter() - start) * 1000)
    path.unlink()
    return round(statistics.median(samples), 3)


def machine() -> dict[str, str]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "?")
    nft = subprocess.run(["nft", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return {"cpu": f"{os.cpu_count()} x {model}", "kernel": platform.release(),
            "python": platform.python_version(), "nft": nft}


def configure_for_bench(served: Any, count: int) -> tuple[ClientKey, list[ClientKey], SequenceRule]:
    """The bench's spa config: per-key grant rate out of the way (latency, not
    limits, is measured), 5 s one-time steps, the fixed sequence, and enough
    keys for ``count`` one-time sequences. Returns (key, one-time keys, rule)."""
    from spa import config as config_module

    served.edit("key_rate = 0.5 ", "key_rate = 100000.0\nkey_burst = 100000 ")
    served.edit("sequence_step = 30", "sequence_step = 5")
    served.config.write_text(served.config.read_text() + (
        '\n[sequences.office]\nports = ["tcp/7000", "udp/8000", "tcp/9000"]\ntimeout = 5\n'
        'open = ["tcp/22"]\n'))
    key = served.keygen("alice")
    otp_keys = [key] + [served.keygen(f"alice{n}") for n in range(1, (count + 1) // 20 + 2)]
    return key, otp_keys, config_module.load(served.config).gate.sequence


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from world import World
    from world.daemon import make_served, remove

    results: dict[str, Any] = {"machine": machine(), "count": args.count}
    with World() as world:
        world.echo_server(SERVICE, 2222)
        served = make_served(world)
        try:
            key, otp_keys, rule = configure_for_bench(served, args.count)
            prepare_addresses(world)
            served.start()
            bench = Bench(world, served, key, otp_keys, rule, args.interval_ms / 1000, args.limit)
            started = bench.snapshot()
            results["idle"] = {"supervisor_rss_mb": started.supervisor.rss_mb, "worker_rss_mb": started.worker.rss_mb}
            results["state_fsync_ms"] = fsync_probe(served.directory)
            if args.count > 0:
                results["knock_to_open"] = knock_to_open(bench, args.count)
            results["under_junk"] = [
                under_junk(bench, rate, args.junk_knocks, args.junk_icmp, args.spacing_ms / 1000)
                for rate in args.rates
            ]
            final = bench.snapshot()
            results["peak_rss_mb"] = {"supervisor": final.supervisor.hwm_mb, "worker": final.worker.hwm_mb}
            log = served.log()
            results["worker_restarts"] = log.count("worker exited")
            results["rejected_lines"] = log.count("rejected ")
        finally:
            if served.process is not None and served.process.poll() is None:
                served.stop()
            remove(served)
    return results


def show(results: dict[str, Any]) -> None:
    print(" ".join(f"{k}={v}" for k, v in results["machine"].items()))
    if "knock_to_open" in results:
        print(f"\nknock to open, {results['count']} knocks each (ms)")
        print(f"{'carrier':<9} {'opened':>7} {'median':>8} {'p99':>8} {'wire med':>9} {'wire p99':>9} {'start-up':>9}")
        for carrier, row in results["knock_to_open"].items():
            print(f"{carrier:<9} {row['opened']:>3}/{row['knocks']:<3} {row['median_ms']:>8} {row['p99_ms']:>8} "
                  f"{row['wire_median_ms']!s:>9} {row['wire_p99_ms']!s:>9} {row['startup_median_ms']!s:>9}")
    print("\nunder junk (valid knocks from bob: opened/sent, median/p99 ms from the wire)")
    print(f"{'target/s':>9} {'sent/s':>8} {'rx':>9} {'parsed':>9} {'dropped':>9} {'udp':>6} {'udp ms':>15} "
          f"{'icmp':>5} {'icmp ms':>15} {'cpu w/s':>11} {'hwm w/s MB':>11}")
    for row in results["under_junk"]:
        print(f"{row['target_per_s']!s:>9} {row['junk_per_s']:>8} {row['server_rx']:>9} {row['worker_parsed_udp']:>9} "
              f"{row['capture_dropped']:>9} {row['udp_opened']:>3}/{row['udp_knocks']:<2} "
              f"{row['udp_median_ms']!s:>7}/{row['udp_p99_ms']!s:<7} {row['icmp_opened']:>2}/{row['icmp_knocks']:<2} "
              f"{row['icmp_median_ms']!s:>7}/{row['icmp_p99_ms']!s:<7} "
              f"{row['worker_cpu_s']:>5}/{row['supervisor_cpu_s']:<5} {row['worker_hwm_mb']:>5}/{row['supervisor_hwm_mb']:<5}")
    print(f"\nappend+fsync in the state directory: median {results['state_fsync_ms']} ms")
    print(f"peak RSS MB {results['peak_rss_mb']}  idle {results['idle']}  "
          f"worker restarts {results['worker_restarts']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=40, help="knocks per carrier (0: skip part 1)")
    parser.add_argument("--rates", default="1000,10000,50000,100000,150000,200000,0",
                        help="junk datagrams per second, comma-separated; 0 is as fast as the sender can")
    parser.add_argument("--junk-knocks", type=int, default=24, help="valid UDP knocks per junk rate")
    parser.add_argument("--junk-icmp", type=int, default=4, help="valid ping knocks per junk rate")
    parser.add_argument("--spacing-ms", type=float, default=100.0, help="pause between knocks under junk")
    parser.add_argument("--interval-ms", type=float, default=0.25, help="between connect attempts")
    parser.add_argument("--limit", type=float, default=3.0, help="seconds a knock may take to open")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--helper", metavar="DEVICE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.helper:
        helper_main(args.helper)
        return 0
    # Bounded either way: these are knocks and floods, not a soak test.
    args.count = max(0, min(args.count, 200))
    args.rates = [max(0, min(int(rate), 10_000_000)) for rate in args.rates.split(",") if rate.strip()]
    args.junk_knocks = max(1, min(args.junk_knocks, 200))
    args.junk_icmp = max(0, min(args.junk_icmp, 50))
    args.limit = max(0.1, min(args.limit, 10.0))
    args.interval_ms = max(0.05, min(args.interval_ms, 100.0))
    if os.geteuid() != 0:
        print("serve_latency: needs root (it makes network namespaces)", file=sys.stderr)
        return 2
    try:
        junk_sender.binary()  # before the world is built, not minutes into the run
    except junk_sender.JunkMissing as error:
        print(f"serve_latency: {error}", file=sys.stderr)
        return 2
    results = measure(args)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        show(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
