"""Sending a knock by each carrier, and waiting for the port to answer.

The thin I/O behind ``spa knock`` and ``spa connect``; the bytes come from
:mod:`spa.client.tokens`.
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass

from spa.core.events import IPAddress, Request
from spa.errors import SpaError

CONNECT_ATTEMPT = 0.15  # seconds one connect attempt may take before a fresh one
SEQUENCE_GAP = 0.05  # seconds between the ports of a sequence, like knock -d 50


class KnockError(SpaError):
    """A knock could not be sent, or the port did not open."""


@dataclass(frozen=True)
class Target:
    """Where a knock goes: the server's address as resolved once."""

    host: str
    address: IPAddress

    @classmethod
    def resolve(cls, host: str) -> Target:
        try:
            return cls(host, ipaddress.ip_address(host))
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
        except OSError as problem:
            raise KnockError(f"unknown server {host!r}: {problem.strerror or problem}") from None
        return cls(host, ipaddress.ip_address(infos[0][4][0]))

    @property
    def family(self) -> int:
        return socket.AF_INET if self.address.version == 4 else socket.AF_INET6


def local_address(target: Target) -> IPAddress:
    """The source address this machine uses toward ``target`` (no packet is sent)."""
    with socket.socket(target.family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((str(target.address), 9))
        except OSError as problem:
            raise KnockError(f"no route to {target.host}: {problem.strerror or problem}") from None
        return ipaddress.ip_address(sock.getsockname()[0])


def send_udp(target: Target, port: int, payload: bytes) -> None:
    with socket.socket(target.family, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(payload, (str(target.address), port))
        except OSError as problem:
            raise KnockError(f"cannot send to {target.host}:{port}: {problem.strerror or problem}") from None


def send_dns(name: str, server: str | None, timeout: float = 2.0) -> str:
    """Ask ``server`` (or the system resolver) for ``name``; wait for any answer.

    The answer is always empty (spa answers valid and invalid tokens alike),
    so it only tells that the query arrived. Returns who was asked.
    """
    if server is None:
        server = system_resolver()
    from dnslib import DNSRecord  # here: the daemon imports this module via the CLI, and never sends queries

    query = DNSRecord.question(name).pack()
    address = ipaddress.ip_address(server)
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        for _ in range(2):
            try:
                sock.sendto(query, (server, 53))
                sock.recvfrom(4096)
                return server
            except socket.timeout:
                continue
            except OSError as problem:
                raise KnockError(f"cannot ask {server} by DNS: {problem.strerror or problem}") from None
    raise KnockError(f"no DNS answer from {server} (is the knock zone delegated? see docs/deploy.md)")


def system_resolver() -> str:
    try:
        with open("/etc/resolv.conf", encoding="utf-8") as handle:
            for line in handle:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    return parts[1].split("%", 1)[0]
    except OSError:
        pass
    raise KnockError("no resolver in /etc/resolv.conf: give --dns-server ADDR")


def send_ping(target: Target, pattern: str) -> None:
    """One echo request carrying ``pattern``, by the system's ping (no privilege needed)."""
    ping = shutil.which("ping")
    if ping is None:
        raise KnockError("no ping program here: knock by --via udp or dns instead")
    argv = [ping, "-c", "1", "-W", "1", "-p", pattern]
    if target.address.version == 6:
        argv.insert(1, "-6")
    subprocess.run([*argv, str(target.address)], capture_output=True, timeout=10, check=False)


def send_sequence(target: Target, ports: tuple[int, ...], proto: str = "tcp") -> None:
    """One SYN (a connect attempt we abandon) or one datagram per port, like ``knock``."""
    for port in ports:
        if proto == "udp":
            send_udp(target, port, b"\0")
        else:
            with socket.socket(target.family, socket.SOCK_STREAM) as sock:
                sock.setblocking(False)
                try:
                    sock.connect((str(target.address), port))
                except (BlockingIOError, OSError):
                    pass
                time.sleep(0.001)  # let the SYN leave before close
        time.sleep(SEQUENCE_GAP)


def wait_open(target: Target, request: Request, timeout: float) -> tuple[socket.socket, float] | None:
    """Connect to the granted port, a fresh attempt every ~150 ms, until ``timeout``.

    A fresh socket per attempt: a SYN the guard dropped is retransmitted by
    the kernel only after a second, far too late. Returns the connected
    socket (``spa connect`` relays over it; a single-use grant admits just
    this connection) and the seconds it took, or None.
    """
    start = time.monotonic()
    deadline = start + timeout
    while True:
        sock = socket.socket(target.family, socket.SOCK_STREAM)
        sock.settimeout(min(CONNECT_ATTEMPT, max(0.01, deadline - time.monotonic())))
        try:
            sock.connect((str(target.address), request.port))
            sock.settimeout(None)
            return sock, time.monotonic() - start
        except (socket.timeout, ConnectionRefusedError):
            sock.close()
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.01)
        except OSError:
            sock.close()
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)
