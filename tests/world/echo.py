"""A tiny TCP echo server: the protected service in the namespace world.

Run inside the server namespace: ``python3 echo.py PORT [PORT...]``. Listens
dual-stack on every port, echoes each connection until it closes, prints
``ready`` once listening. Threads per connection; the process is killed by
pid at teardown, so there is no shutdown protocol.
"""

from __future__ import annotations

import socket
import sys
import threading


def serve_connection(connection: socket.socket) -> None:
    with connection:
        while True:
            data = connection.recv(4096)
            if not data:
                return
            connection.sendall(data)


def serve(listener: socket.socket) -> None:
    while True:
        connection, _ = listener.accept()
        threading.Thread(target=serve_connection, args=(connection,), daemon=True).start()


def listen(port: int) -> socket.socket:
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    listener.bind(("::", port))
    listener.listen(64)
    return listener


def main(ports: list[int]) -> None:
    listeners = [listen(port) for port in ports]
    for listener in listeners[1:]:
        threading.Thread(target=serve, args=(listener,), daemon=True).start()
    print("ready", flush=True)
    serve(listeners[0])


if __name__ == "__main__":
    main([int(port) for port in sys.argv[1:]])
