"""``spa knock``, ``spa token`` and ``spa connect``: the knocking side."""

from __future__ import annotations

import argparse
import ipaddress
import os
import selectors
import socket
import sys
import time

from spa.client import keyfile, knocking, stun, tokens
from spa.client.knocking import KnockError, Target
from spa.core.events import IPAddress, Request
from spa.core.keys import ClientKey
from spa.errors import SpaError

VIAS = ("udp", "icmp", "dns", "sequence")
DEFAULT_STUN = ("stun.l.google.com:19302", "stun.cloudflare.com:3478")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    knock = subparsers.add_parser(
        "knock", help="knock, then wait until the port answers",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Send a knock to the server in the key file (or HOST) and wait until the\n"
        "protected port accepts a connection. Exit 0 when it is open.",
        epilog="examples:\n"
        "  spa knock --key alice.spakey\n"
        "  spa knock --via dns --ip auto            # through your resolver, from behind NAT\n"
        "  spa knock --via icmp --open tcp/3389 203.0.113.10",
    )
    _common(knock)
    knock.add_argument("--wait", type=float, default=5.0, metavar="SECONDS",
                       help="how long to wait for the port (default 5)")
    knock.add_argument("--no-wait", action="store_true",
                       help="send the knock and exit (use this with single-use grants)")
    knock.add_argument("host", nargs="?", help="server (default: the key file's)")
    knock.set_defaults(func=run_knock)

    token = subparsers.add_parser(
        "token", help="print a token (or the command to paste) for knocking from another device",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  spa token --key alice.spakey --via icmp --ip 198.51.100.7 --command\n"
        "  spa token --via dns --ip 198.51.100.7      # for nslookup on a phone\n"
        "  spa token --via sequence --command         # knock HOST p1 p2 p3, valid for this 30 s step",
    )
    _key_and_port(token)
    token.add_argument("--via", choices=("icmp", "dns", "sequence"), default="dns")
    token.add_argument("--ip", metavar="ADDRESS", help="the address to open: the other device's public address")
    token.add_argument("--at", type=int, metavar="UNIXTIME",
                       help="the token's time (default: now; the server allows ±60 s)")
    token.add_argument("--command", action="store_true", help="print the ready-to-paste ping or nslookup line")
    token.set_defaults(func=run_token)

    connect = subparsers.add_parser(
        "connect", help="knock, connect and relay stdin/stdout (an ssh ProxyCommand)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Knock, then connect to HOST PORT and relay stdin and stdout over the\n"
        "connection, so ssh can use it as its transport. The knock's own\n"
        "connection is the one relayed, so single-use grants work too.",
        epilog="~/.ssh/config:\n"
        "  Host myserver\n"
        "      HostName 203.0.113.10\n"
        "      ProxyCommand spa connect --key ~/.config/spa/alice.spakey %h %p",
    )
    _common(connect, port=False)  # the port is connect's own argument
    connect.add_argument("--wait", type=float, default=5.0, metavar="SECONDS", help="how long to wait for the port")
    connect.add_argument("host", help="server to connect to")
    connect.add_argument("port", type=int, help="protected TCP port")
    connect.set_defaults(func=run_connect)


def _key_and_port(parser: argparse.ArgumentParser, port: bool = True) -> None:
    parser.add_argument("--key", metavar="FILE", help="client key file (default: $SPA_KEY, then ~/.config/spa/)")
    if port:
        parser.add_argument("--open", metavar="PROTO/PORT", help="which of the key's ports (default: its default_open)")


def _common(parser: argparse.ArgumentParser, port: bool = True) -> None:
    _key_and_port(parser, port)
    parser.add_argument("--via", choices=VIAS, default="udp", help="how to knock (default udp)")
    parser.add_argument("--ip", metavar="auto|ADDRESS",
                        help="the address to open (default: this machine's); auto asks a STUN server")
    parser.add_argument("--stun-server", action="append", default=[], metavar="HOST[:PORT]",
                        help="STUN server for --ip auto (repeatable)")
    parser.add_argument("--dns-server", metavar="ADDRESS",
                        help="with --via dns: ask this server (the spa server itself: a direct query) "
                        "instead of the system resolver")


def _address(text: str | None, stun_servers: list[str]) -> IPAddress | None:
    if text is None:
        return None
    if text == "auto":
        return stun.public_address(stun_servers or DEFAULT_STUN)
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise SpaError(f"--ip: {text!r} is not an address (or auto)") from None


def _request(key: ClientKey, text: str | None) -> Request:
    if text is None:
        return key.default_request
    try:
        request = Request.parse(text)
    except ValueError as problem:
        raise SpaError(f"--open: {problem}") from None
    key.request_index(request)  # refuses ports the key may not open, naming the ones it may
    return request


def send_knock(key: ClientKey, target: Target, args: argparse.Namespace, request: Request) -> str:
    """Send one knock by ``args.via``; return a short description of what was sent."""
    now = int(time.time())
    address = _address(args.ip, args.stun_server)
    via = args.via
    if key.signing_key is not None and via != "udp":
        raise SpaError(f"key {key.name} is an Ed25519 key: it can only knock by UDP")
    if via == "udp":
        source = None if address is not None else knocking.local_address(target)
        datagram = tokens.spa_datagram(key, now, (request,), address=address, source=source)
        knocking.send_udp(target, key.udp_port, datagram)
        return f"a UDP datagram to {target.host}:{key.udp_port}"
    if via == "icmp":
        bound = address or knocking.local_address(target)
        knocking.send_ping(target, tokens.ping_pattern(tokens.compact_token(key, now, bound, request)))
        return f"a ping to {target.host}"
    if via == "dns":
        if not key.zone:
            raise SpaError(f"key {key.name} names no DNS zone: the server has no DNS carrier")
        direct = args.dns_server is not None and ipaddress.ip_address(args.dns_server) == target.address
        bound = address or knocking.local_address(target)
        if direct:
            token = tokens.compact_token(key, now, bound, request)
        else:
            token = tokens.extended_token(key, now, bound, request)
        asked = knocking.send_dns(tokens.dns_name(token, key.zone), args.dns_server)
        return f"a DNS query for {key.zone} via {asked}"
    ports = tokens.otp_sequence(key, now, key.sequence, request)
    knocking.send_sequence(target, ports)
    return f"a port sequence to {target.host}"


def run_knock(args: argparse.Namespace) -> int:
    key = keyfile.load(args.key)
    target = Target.resolve(args.host or key.server)
    request = _request(key, args.open)
    sent = send_knock(key, target, args, request)
    if args.no_wait or request.proto != "tcp":
        print(f"sent {sent}")
        return 0
    opened = knocking.wait_open(target, request, args.wait)
    if opened is None:
        raise KnockError(
            f"{request} on {target.host} did not open within {args.wait:g} s after {sent}; "
            "check the key, this machine's clock (the server allows ±60 s), and for NAT try --ip auto"
        )
    sock, seconds = opened
    sock.close()
    print(f"{request} on {target.host} is open ({seconds * 1000:.0f} ms after {sent})")
    return 0


def run_token(args: argparse.Namespace) -> int:
    key = keyfile.load(args.key)
    request = _request(key, args.open)
    now = args.at if args.at is not None else int(time.time())
    if args.via == "sequence":  # bound to the source by nature: no address in it
        ports = " ".join(map(str, tokens.otp_sequence(key, now, key.sequence, request)))
        print(f"knock {key.server} {ports}" if args.command else ports)
        return 0
    if args.ip:
        address = _address(args.ip, [])
    else:
        address = knocking.local_address(Target.resolve(key.server))
    assert address is not None
    if args.via == "icmp":
        pattern = tokens.ping_pattern(tokens.compact_token(key, now, address, request))
        print(f"ping -c 2 -p {pattern} {key.server}" if args.command else pattern)
        return 0
    if not key.zone:
        raise SpaError(f"key {key.name} names no DNS zone: the server has no DNS carrier")
    name = tokens.dns_name(tokens.extended_token(key, now, address, request), key.zone)
    print(f"nslookup {name}" if args.command else name)
    return 0


def run_connect(args: argparse.Namespace) -> int:
    key = keyfile.load(args.key)
    target = Target.resolve(args.host)
    request = Request("tcp", args.port)
    key.request_index(request)
    sent = send_knock(key, target, args, request)
    opened = knocking.wait_open(target, request, args.wait)
    if opened is None:
        raise KnockError(f"{request} on {target.host} did not open within {args.wait:g} s after {sent}")
    sock, _ = opened
    with sock:
        relay(sock)
    return 0


def relay(sock: socket.socket) -> None:
    """Copy stdin to ``sock`` and ``sock`` to stdout until the server closes."""
    selector = selectors.DefaultSelector()
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    selector.register(stdin, selectors.EVENT_READ, "in")
    selector.register(sock, selectors.EVENT_READ, "net")
    reading_stdin = True
    while True:
        for selected, _ in selector.select():
            if selected.data == "in":
                data = os.read(stdin, 65536)
                if data:
                    sock.sendall(data)
                else:
                    selector.unregister(stdin)
                    reading_stdin = False
                    sock.shutdown(socket.SHUT_WR)
            else:
                data = sock.recv(65536)
                if not data:
                    return
                view = memoryview(data)
                while view:
                    view = view[os.write(stdout, view):]
        if not reading_stdin and not selector.get_map():
            return
