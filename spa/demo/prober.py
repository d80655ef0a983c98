"""One fresh TCP connection attempt per request, from inside a client namespace.

Run as ``python -m spa.demo.prober`` inside a namespace and kept running:
each stdin line ``HOST PORT TIMEOUT`` gets one stdout line with the result
of a new connection attempt: ``open`` (handshake completed), ``dropped``
(no answer within TIMEOUT: a firewall dropped the SYN), ``refused`` (RST),
``unreachable`` (ICMP unreachable or no route) or ``error:<reason>``.
A long-lived helper costs one interpreter start per client instead of one
per probe, and probes run many times (polling for a port to open).
Standard library only, so it starts fast.
"""

from __future__ import annotations

import errno
import socket
import sys


def probe(host: str, port: int, timeout: float) -> str:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
        except socket.timeout:
            return "dropped"
        except ConnectionRefusedError:
            return "refused"
        except OSError as error:
            if error.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
                return "unreachable"
            return f"error:{errno.errorcode.get(error.errno or 0, error)}"
        return "open"


def main() -> None:
    print("ready", flush=True)
    for line in sys.stdin:
        try:
            host, port, timeout = line.split()
            result = probe(host, int(port), float(timeout))
        except ValueError as error:
            result = f"error:{error}".replace("\n", " ")
        print(result, flush=True)


if __name__ == "__main__":
    main()
