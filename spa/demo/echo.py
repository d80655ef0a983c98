"""A tiny TCP echo service: the second protected service in the demo world.

Run inside a namespace: ``python -m spa.demo.echo PORT [PORT...]``. Listens
dual-stack on every port, echoes each connection until it closes, prints
``ready`` once listening and then ``peer ADDRESS PORT LOCALPORT`` for every
connection it accepts, so a test can see which address a client arrives
from (behind the NAT router, A and B both arrive as 198.51.100.2). One
thread per connection, each with an idle timeout; killed by pid at the end,
so there is no shutdown protocol.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading

IDLE = 30.0  # seconds a connection may sit silent before we drop it

_print_lock = threading.Lock()


def say(line: str) -> None:
    with _print_lock:
        print(line, flush=True)


def plain(address: str) -> str:
    """``::ffff:198.51.100.2`` (an IPv4 peer on a dual-stack socket) as ``198.51.100.2``."""
    mapped = ipaddress.ip_address(address.split("%")[0])
    if isinstance(mapped, ipaddress.IPv6Address) and mapped.ipv4_mapped is not None:
        return str(mapped.ipv4_mapped)
    return str(mapped)


def serve_connection(connection: socket.socket) -> None:
    with connection:
        connection.settimeout(IDLE)
        try:
            while True:
                data = connection.recv(4096)
                if not data:
                    return
                connection.sendall(data)
        except OSError:
            return


def serve(listener: socket.socket) -> None:
    local_port = listener.getsockname()[1]
    while True:
        connection, peer = listener.accept()
        say(f"peer {plain(peer[0])} {peer[1]} {local_port}")
        threading.Thread(target=serve_connection, args=(connection,), daemon=True).start()


def listen(port: int) -> socket.socket:
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    listener.bind(("::", port))
    listener.listen(64)
    return listener


def main(ports: list[int]) -> None:
    if not ports:
        raise SystemExit("usage: python -m spa.demo.echo PORT [PORT...]")
    listeners = [listen(port) for port in ports]
    for listener in listeners[1:]:
        threading.Thread(target=serve, args=(listener,), daemon=True).start()
    say("ready")
    serve(listeners[0])


if __name__ == "__main__":
    main([int(port) for port in sys.argv[1:]])
