"""Run spa's packet intake inside a namespace and report what it hears.

Two halves in one file, like agent.py and its proxy:

* run as a script inside a namespace (``python3 listen.py '<json>'``), it
  opens a :class:`spa.intake.capture.Capture`, prints ``{"ready": true}``
  (or ``{"error": "..."}``), then one JSON line per captured packet: the
  parsed fields, or ``{"unparsed": hex}`` if ``parse`` refused it. It exits
  by itself after ``lifetime`` seconds; the test kills it by pid before that.
  Options: ``drop_after_open`` (setuid to nobody once the sockets exist, as
  the daemon will), ``drop_before_open`` (start unprivileged) and
  ``try_unfilter`` (try to detach and to replace the filter, still as root,
  and add the outcomes to the ready line).
* :func:`listen` starts it through :meth:`World.popen` and returns a
  :class:`Listener` that reads those lines with bounded waits.

Also ``python3 listen.py send udp|syn HOST PORT [HEX]``: one UDP datagram,
or one TCP connection attempt (a single SYN: the attempt gives up before
the kernel's first retransmission at 1 s).
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

NOBODY = 65534
SCRIPT = Path(__file__).resolve()


def wanted_from(spec: dict[str, Any]) -> Any:
    from spa.intake.bpf import PortRange, Wanted

    def ranges(name: str) -> tuple[PortRange, ...]:
        return tuple(PortRange(low, high) for low, high in spec.get(name, ()))

    return Wanted(bool(spec.get("icmp_echo")), ranges("udp"), ranges("tcp_syn"))


def drop_privileges() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def unfilter(sock: socket.socket) -> dict[str, str]:
    """What detaching the filter, and attaching an accept-all one, give (errno names)."""
    import errno

    from spa.intake.bpf import RET_K, attach

    def outcome(attempt: Any) -> str:
        try:
            attempt()
        except OSError as problem:
            return errno.errorcode.get(problem.errno or 0, "?")
        return "ok"

    return {"detach": outcome(lambda: sock.setsockopt(socket.SOL_SOCKET, 27, 0)),  # SO_DETACH_FILTER
            "replace": outcome(lambda: attach(sock, [(RET_K, 0, 0, 0x40000)]))}


def serve(spec: dict[str, Any]) -> None:
    from spa.errors import SpaError
    from spa.intake.capture import Capture
    from spa.intake.packet import parse

    def say(value: dict[str, Any]) -> None:
        print(json.dumps(value), flush=True)

    if spec.get("drop_before_open"):
        drop_privileges()
    try:
        capture = Capture(wanted_from(spec["wanted"]), tuple(spec.get("interfaces", ())))
    except SpaError as error:
        say({"error": str(error)})
        return
    if spec.get("drop_after_open"):
        drop_privileges()
    ready: dict[str, Any] = {"ready": True, "uid": os.getuid()}
    if spec.get("try_unfilter"):
        ready.update(unfilter(capture.sockets()[0]))
    say(ready)
    deadline = time.monotonic() + float(spec.get("lifetime", 60))
    with selectors.DefaultSelector() as selector:
        for sock in capture.sockets():
            selector.register(sock, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.5):
                for data in capture.drain(key.fileobj):  # type: ignore[arg-type]
                    packet = parse(data)
                    if packet is None:
                        say({"unparsed": data.hex()})
                        continue
                    say({"source": str(packet.source), "destination": str(packet.destination),
                         "protocol": packet.protocol, "port": packet.port, "flags": packet.flags,
                         "payload": packet.payload.hex()})
    capture.close()


def send(kind: str, host: str, port: int, payload: bytes) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if kind == "udp":
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.sendto(payload, (host, port))
        return
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        try:
            sock.connect((host, port))
        except OSError:
            pass  # dropped (timeout) or refused: the SYN went out either way


class Listener:
    """The test side: reads the listener's JSON lines with bounded waits."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.pid = process.pid
        self._selector = selectors.DefaultSelector()
        self._buffer = b""
        assert process.stdout is not None
        self._selector.register(process.stdout, selectors.EVENT_READ)
        self.first = self._line(timeout=15)  # {"ready": ...} or {"error": ...}

    def _line(self, timeout: float) -> dict[str, Any] | None:
        """The next line, or None after ``timeout`` seconds.

        Reads the pipe's fd directly: a buffered readline could swallow
        several lines at once and leave the selector waiting for data that
        already arrived.
        """
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            if not self._selector.select(max(0.0, deadline - time.monotonic())):
                return None
            chunk = os.read(self.process.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError(f"listener exited ({self.process.poll()})")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return dict(json.loads(line))

    def packets(self, count: int, timeout: float = 5.0, settle: float = 0.5) -> list[dict[str, Any]]:
        """Wait (bounded) for ``count`` packets, then ``settle`` seconds for extras."""
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(found) < count and time.monotonic() < deadline:
            line = self._line(max(0.0, deadline - time.monotonic()))
            if line is not None:
                found.append(line)
        settled = time.monotonic() + settle
        while time.monotonic() < settled:
            line = self._line(max(0.0, settled - time.monotonic()))
            if line is not None:
                found.append(line)
        return found


def listen(world: Any, host: Any, wanted: dict[str, Any], **options: Any) -> Listener:
    """Start the listener in ``host``'s namespace (a World process: killed by pid at close)."""
    spec = {"wanted": wanted, **options}
    return Listener(world.popen(host, [sys.executable, str(SCRIPT), json.dumps(spec)]))


def sender_argv(kind: str, host: str, port: int, payload: bytes = b"") -> list[str]:
    return [sys.executable, str(SCRIPT), "send", kind, host, str(port), payload.hex()]


if __name__ == "__main__":
    if sys.argv[1] == "send":
        send(sys.argv[2], sys.argv[3], int(sys.argv[4]), bytes.fromhex(sys.argv[5] if len(sys.argv) > 5 else ""))
    else:
        serve(json.loads(sys.argv[1]))
