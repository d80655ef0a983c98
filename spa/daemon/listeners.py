"""The sockets spa serves on, opened by the supervisor while it is still root.

Packet capture needs CAP_NET_RAW and DNS wants port 53; both are only
needed to *open* a socket, so the worker inherits open sockets and never
holds the privilege itself.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from spa.config import Config, wanted
from spa.errors import SpaError
from spa.intake.capture import Capture, set_receive_buffer

DNS_BACKLOG = 64
DNS_RCVBUF = 8 << 20  # bytes of queued DNS queries, like the capture sockets


@dataclass
class Listeners:
    capture: Capture | None = None
    dns_udp: list[socket.socket] = field(default_factory=list)
    dns_tcp: list[socket.socket] = field(default_factory=list)

    def close(self) -> None:
        if self.capture is not None:
            self.capture.close()
        for sock in self.dns_udp + self.dns_tcp:
            sock.close()


def open_listeners(config: Config) -> Listeners:
    """Open every socket the config asks for; close them all if one fails."""
    listeners = Listeners()
    try:
        want = wanted(config)
        if want.icmp_echo or want.udp or want.tcp_syn:
            listeners.capture = Capture(want, config.interfaces)
        if config.dns is not None and config.dns.mode == "serve":
            for address in config.dns.listen:
                udp, tcp = _dns_pair(str(address), address.version, config.dns.port)
                listeners.dns_udp.append(udp)
                listeners.dns_tcp.append(tcp)
    except BaseException:
        listeners.close()
        raise
    return listeners


def _dns_pair(address: str, version: int, port: int) -> tuple[socket.socket, socket.socket]:
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    opened: list[socket.socket] = []
    try:
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            sock = socket.socket(family, kind)
            opened.append(sock)
            if family == socket.AF_INET6:
                # "::" must not also claim IPv4: "0.0.0.0" is listed on its own.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            else:
                # As large as the capture's: the default (~200 KB) dropped 73% of a
                # DNS flood on a busy machine, valid knocks among them (docs/benchmarks.md).
                set_receive_buffer(sock, DNS_RCVBUF)
            sock.bind((address, port))
            if kind == socket.SOCK_STREAM:
                sock.listen(DNS_BACKLOG)
            sock.setblocking(False)
    except OSError as problem:
        for sock in opened:
            sock.close()
        raise SpaError(f"cannot serve DNS on [{address}]:{port}: {problem.strerror or problem}") from None
    return opened[0], opened[1]
