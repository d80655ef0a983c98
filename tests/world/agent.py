"""A helper process that acts inside one namespace, driven over stdin/stdout.

The test process stays in the root namespace and sends one JSON object per
line; the agent answers one JSON line each. On the server it holds a firewall
backend (so killing it is killing "the daemon": its libnftables socket and
owned table go with it); on a client it makes TCP connections, and can keep
one open to show that established sessions survive.

Ops: backend, install, grant, revoke, live, uninstall, close, probe,
connect, echo, disconnect, resend. Every socket operation has a timeout.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
import time
from typing import Any

from spa.core.events import Carrier, Grant, Request
from spa.firewall import Backend, FirewallSettings, open_backend

REQUEST_FIELDS = ("protect", "single_use")


def settings_from(data: dict[str, Any]) -> FirewallSettings:
    values = dict(data)
    for name in REQUEST_FIELDS:
        if name in values:
            values[name] = tuple(Request.parse(text) for text in values[name])
    for name in ("start_command", "stop_command"):
        if name in values:
            values[name] = tuple(values[name])
    return FirewallSettings(**values)


def probe(host: str, port: int, timeout: float, source: str | None) -> str:
    """``open`` (connected and echoed), ``dropped`` (no answer) or ``refused``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        if source:
            sock.bind((source, 0))
        try:
            sock.connect((host, port))
            sock.sendall(b"ping")
            return "open" if sock.recv(16) == b"ping" else "garbled"
        except socket.timeout:
            return "dropped"
        except ConnectionRefusedError:
            return "refused"


def resend(pcap: str, source: str | None, destination: str | None, gap: float) -> int:
    """Send the IPv4 packets of a tcpdump capture again, as an eavesdropper would.

    ``source``/``destination`` rewrite the addresses (a replay from another
    host); the IP, TCP, UDP and ICMP checksums are then computed afresh, so
    the copy is a valid packet from its new source. Everything else (ports,
    IP id, TTL, payload) is sent as captured. Returns how many were sent.
    """
    # Imported here: only replay tests need scapy, and it takes ~0.5 s to load.
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.utils import rdpcap

    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as sock:
        for frame in rdpcap(pcap):
            if IP not in frame:
                continue
            packet = frame[IP].copy()
            if source:
                packet.src = source
            if destination:
                packet.dst = destination
            del packet.chksum
            for layer in (TCP, UDP, ICMP):
                if layer in packet:
                    del packet[layer].chksum
            sock.sendto(bytes(packet), (packet.dst, 0))
            sent += 1
            time.sleep(gap)
    return sent


class Agent:
    def __init__(self) -> None:
        self.backend: Backend | None = None
        self.connections: dict[str, socket.socket] = {}

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request["op"]
        if op == "backend":
            self.backend = open_backend(settings_from(request["settings"]))
            return {}
        if op in ("install", "uninstall", "close"):
            getattr(self._backend(), op)()
            return {}
        if op == "grant":
            self._backend().grant(
                Grant(
                    ipaddress.ip_address(request["address"]),
                    Request.parse(request["request"]),
                    int(request["seconds"]),
                    request.get("key", "test"),
                    Carrier(request.get("carrier", "udp")),
                    bool(request.get("single_use", False)),
                )
            )
            return {"fast": bool(getattr(self._backend(), "fast_grants", False))}
        if op == "revoke":
            self._backend().revoke(
                ipaddress.ip_address(request["address"]), Request.parse(request["request"])
            )
            return {}
        if op == "live":
            return {
                "grants": [
                    {
                        "address": str(g.address),
                        "request": str(g.request),
                        "seconds_left": g.seconds_left,
                        "key": g.key,
                        "single_use": g.single_use,
                    }
                    for g in self._backend().live()
                ]
            }
        if op == "probe":
            return {
                "result": probe(
                    request["host"], int(request["port"]),
                    float(request.get("timeout", 0.4)), request.get("source"),
                )
            }
        if op == "connect":
            host = request["host"]
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(float(request.get("timeout", 1.0)))
            sock.connect((host, int(request["port"])))
            self.connections[request["id"]] = sock
            return {}
        if op == "echo":
            sock = self.connections[request["id"]]
            data = request["data"].encode()
            sock.sendall(data)
            received = b""
            deadline = time.monotonic() + float(request.get("timeout", 1.0))
            while len(received) < len(data) and time.monotonic() < deadline:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                received += chunk
            return {"data": received.decode(errors="replace")}
        if op == "resend":
            return {"sent": resend(request["pcap"], request.get("source"), request.get("destination"),
                                   float(request.get("gap", 0.02)))}
        if op == "disconnect":
            self.connections.pop(request["id"]).close()
            return {}
        raise ValueError(f"unknown op {op!r}")

    def _backend(self) -> Backend:
        if self.backend is None:
            raise RuntimeError("no backend: send op=backend first")
        return self.backend


def main() -> None:
    agent = Agent()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        try:
            reply = {"ok": True, **agent.handle(json.loads(line))}
        except Exception as error:  # report, keep serving: the test decides
            reply = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
