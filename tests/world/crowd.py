"""A crowd of DNS-over-TCP clients that makes the server evict one at a bad moment.

``python crowd.py evict SERVER --clients N --rounds R --seconds S`` (inside a
client namespace) opens ``N`` idle connections to port 53, as many as the
server serves at once, so that every further connection makes it close its
least recently active client. Each round then connects once more and, right
after, sends a query on each of the ``--targets`` oldest connections: the
new connection and the queries of the clients about to be evicted reach the
server together, so their events arrive in one batch of its event loop, the
new connection ahead of them. A server that closes a client while that
client's event is still waiting in the batch must not trip over it.

Connections the server closed are noticed and left out; the ones it
answered go to the back of the queue (their activity made them the newest).
Bounded: at most ``--rounds`` rounds, ``--seconds`` seconds, one connection
a round. Prints ``ready`` once the crowd is connected and a JSON summary
(rounds, answers, closed by the server) at the end.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time

ROUND_GAP = 0.05  # seconds between rounds: the server settles, closes show up


def query(ident: int, zone: str) -> bytes:
    """A framed DNS-over-TCP query: SOA at the zone apex."""
    name = b"".join(bytes([len(part)]) + part.encode() for part in zone.split(".")) + b"\x00"
    message = struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0) + name + b"\x00\x06\x00\x01"
    return struct.pack(">H", len(message)) + message


def connect(server: str) -> socket.socket:
    sock = socket.create_connection((server, 53), timeout=5)
    sock.setblocking(False)
    return sock


def closed(sock: socket.socket) -> bool | None:
    """True if the server closed ``sock``, False if it answered, None if silent so far."""
    answered = False
    for _ in range(64):  # bounded: a reply is a few hundred bytes
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return False if answered else None
        except OSError:  # reset: closed with our query unread
            return True
        if not data:
            return True
        answered = True
    return False


def evict(server: str, zone: str, clients: int, rounds: int, targets: int, seconds: float) -> dict[str, int]:
    queue = [connect(server) for _ in range(clients)]  # oldest first
    time.sleep(0.3)  # let the server accept them all, in this order
    print("ready", flush=True)
    summary = {"rounds": 0, "answers": 0, "closed by the server": 0}
    start = time.monotonic()
    ident = 0
    while summary["rounds"] < rounds and time.monotonic() - start < seconds and len(queue) > targets:
        newcomer = connect(server)
        aimed = queue[:targets]
        for sock in aimed:
            ident += 1
            try:
                sock.send(query(ident, zone))
            except OSError:
                pass
        time.sleep(ROUND_GAP)
        kept, answered = [], []
        for sock in queue:
            fate = closed(sock)
            if fate:
                summary["closed by the server"] += 1
                sock.close()
            elif fate is False:
                summary["answers"] += 1
                answered.append(sock)
            else:
                kept.append(sock)
        queue = kept + answered + [newcomer]
        summary["rounds"] += 1
    for sock in queue:
        sock.close()
    return summary


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    e = commands.add_parser("evict")
    e.add_argument("server")
    e.add_argument("--zone", required=True)
    e.add_argument("--clients", type=int, required=True)
    e.add_argument("--rounds", type=int, required=True)
    e.add_argument("--targets", type=int, default=4)
    e.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args(argv)
    result = evict(args.server, args.zone, args.clients, args.rounds, args.targets, args.seconds)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
