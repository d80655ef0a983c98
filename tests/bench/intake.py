#!/usr/bin/env python3
"""How many packets per second Capture.drain delivers, in a namespace world.

Run as root: ``python3 tests/bench/intake.py [--count N] [--json]``. It builds
the test world of tests/world (server and alice joined by a veth pair, all in
namespaces it makes and removes), runs a receiver with a Capture in the server
and a bounded sender in alice that sends N UDP datagrams of 64 bytes.

Measured:

* ``queued_drain``: the sender fills the socket's queue (a 256 MiB buffer, so
  nothing is dropped) while the receiver waits; then the receiver drains it
  all, timed. This is the drain rate alone, independent of the sender.
* ``queued_drain_parse``: the same, with ``parse()`` on every packet: the
  least work the daemon does per packet.
* ``live``: sender and receiver run at once (one core each); the receiver
  drains and parses as packets come. Delivered per second, and how many the
  kernel dropped: bounded by the sender, which is a Python loop too.
* ``junk``: N/4 datagrams to a port the filter does not want; the receiver
  must see none of them (the kernel refused them).

Every phase counts what arrived against what was sent, so a fast but wrong
intake cannot produce a figure.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import sys
import time
from pathlib import Path
from typing import Any

from figures import print_results  # noqa: E402 - a sibling module; the script's directory is on sys.path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))  # tests/, for the world package
sys.path.insert(0, str(HERE.parents[2]))  # the checkout, for spa

PORT, JUNK_PORT = 62201, 62202
PAYLOAD = 64
RCVBUF = 256 << 20
SEND_LIMIT_S = 60.0


def sender(host: str, port: int, count: int) -> None:
    """Send ``count`` datagrams as fast as one Python loop can (bounded in time)."""
    payload = os.urandom(PAYLOAD)
    address = (host, port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sendto = sock.sendto
        start = time.perf_counter()
        deadline = start + SEND_LIMIT_S
        sent = 0
        while sent < count and time.perf_counter() < deadline:
            for _ in range(min(1000, count - sent)):
                try:
                    sendto(payload, address)
                except (BlockingIOError, ConnectionRefusedError):
                    continue
                sent += 1
        seconds = time.perf_counter() - start
    print(json.dumps({"sent": sent, "seconds": seconds}), flush=True)


def receiver() -> None:
    """Hold a Capture in this namespace and run the phases asked on stdin."""
    from spa.intake.bpf import PortRange, Wanted
    from spa.intake.capture import Capture
    from spa.intake.packet import parse

    capture = Capture(Wanted(udp=(PortRange(PORT, PORT),)), rcvbuf=RCVBUF)
    [sock] = capture.sockets()
    drain = capture.drain
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command, *arguments = line.split()
        result: dict[str, Any]
        if command == "reset":
            while drain(sock):
                pass
            capture.statistics()  # reading resets the kernel's counters
            result = {}
        elif command == "queued":
            with_parse = arguments == ["parse"]
            count = parsed = 0
            start = time.perf_counter()
            while True:
                batch = drain(sock, 256)
                if not batch:
                    break
                count += len(batch)
                if with_parse:
                    for data in batch:
                        if parse(data) is not None:
                            parsed += 1
            seconds = time.perf_counter() - start
            result = {"count": count, "parsed": parsed, "seconds": seconds}
        elif command == "live":
            expected, limit = int(arguments[0]), float(arguments[1])
            count = parsed = 0
            first = last = 0.0
            deadline = time.monotonic() + limit
            with selectors.DefaultSelector() as selector:
                selector.register(sock, selectors.EVENT_READ)
                while count < expected and time.monotonic() < deadline:
                    if not selector.select(timeout=1.0):
                        if count:  # a second of silence: the sender is done, the rest was dropped
                            break
                        continue
                    batch = drain(sock, 256)
                    if not batch:
                        continue
                    last = time.perf_counter()
                    first = first or last
                    count += len(batch)
                    for data in batch:
                        if parse(data) is not None:
                            parsed += 1
            result = {"count": count, "parsed": parsed, "seconds": last - first}
        else:
            result = {"error": f"unknown command {command!r}"}
        statistics = capture.statistics()
        result.update(matched=statistics.matched, dropped=statistics.dropped)
        print(json.dumps(result), flush=True)
    capture.close()


class Receiver:
    """The bench's side of the receiver process (bounded waits)."""

    def __init__(self, world: Any) -> None:
        self.process = world.popen(world.server, [sys.executable, str(HERE), "--receiver"])
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.process.stdout, selectors.EVENT_READ)
        assert self.read(15).get("ready"), "receiver did not start"

    def read(self, timeout: float) -> dict[str, Any]:
        if not self.selector.select(timeout):
            raise TimeoutError("receiver silent")
        line = self.process.stdout.readline()  # one request, one line: no read-ahead to lose
        if not line:
            raise RuntimeError("receiver exited")
        return dict(json.loads(line))

    def ask(self, command: str, timeout: float = 90) -> dict[str, Any]:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.read(timeout)


def send(world: Any, port: int, count: int) -> dict[str, Any]:
    argv = [sys.executable, str(HERE), "--sender", world.server_address(world.alice), str(port), str(count)]
    result = world.alice.run(argv, timeout=SEND_LIMIT_S + 30)
    return dict(json.loads(result.stdout))


def measure(count: int) -> dict[str, Any]:
    from world import World

    results: dict[str, Any] = {"count": count, "payload_bytes": PAYLOAD, "python": sys.version.split()[0]}
    with World() as world:
        receiver_ = Receiver(world)
        for name, command in (("queued_drain", "queued"), ("queued_drain_parse", "queued parse")):
            receiver_.ask("reset")
            sent = send(world, PORT, count)
            time.sleep(0.2)  # let the last packets reach the queue
            got = receiver_.ask(command)
            assert got["count"] == sent["sent"], (name, got, sent)
            assert got["dropped"] == 0, (name, got)
            if command.endswith("parse"):
                assert got["parsed"] == got["count"], got
            results[f"{name}_per_s"] = round(got["count"] / got["seconds"])
            results["sender_per_s"] = round(sent["sent"] / sent["seconds"])

        receiver_.ask("reset")
        receiver_.process.stdin.write(f"live {count} {SEND_LIMIT_S}\n")
        receiver_.process.stdin.flush()
        sent = send(world, PORT, count)
        got = receiver_.read(SEND_LIMIT_S + 30)
        assert got["count"] + got["dropped"] == sent["sent"], (got, sent)
        assert got["parsed"] == got["count"], got
        results["live_per_s"] = round(got["count"] / got["seconds"]) if got["seconds"] > 0 else 0
        results["live_dropped"] = got["dropped"]
        results["live_sender_per_s"] = round(sent["sent"] / sent["seconds"])

        receiver_.ask("reset")
        sent = send(world, JUNK_PORT, max(1, count // 4))
        time.sleep(0.2)
        got = receiver_.ask("queued")
        assert got["count"] == 0 and got["matched"] == 0, ("junk passed the filter", got)
        results["junk_sent"] = sent["sent"]
        results["junk_captured"] = got["count"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--receiver", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sender", nargs=3, metavar=("HOST", "PORT", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        receiver()
        return
    if args.sender:
        host, port, count = args.sender
        sender(host, int(port), int(count))
        return
    results = measure(args.count)
    print_results(results, args.json)


if __name__ == "__main__":
    main()
