"""Knock to open for spa's DNS carrier through a real recursive resolver (Unbound).

The side-by-side bench (compare.py) runs in the small test world, which has
no resolver. This phase uses the demo's miniature internet as it is
(spa/demo/internet.py: Unbound on 192.0.2.53 with QNAME minimisation and
0x20, the parent zone example.test on 192.0.2.54 delegating
knock.example.test to the spa server 192.0.2.10), starts ``spa serve``
there, and knocks from client C (203.0.113.0/24, no NAT) with
``dig @192.0.2.53 <extended token>.knock.example.test``: the query reaches
spa from the resolver, and the token names the address to open.

Timing is serve_latency's helper (fresh connect every ``interval`` until one
completes; "from the wire" from the kernel timestamp of dig's query leaving
C). Every knock comes from its own address: C gets 240 extra /32s and inet
permanent neighbour entries for them, so no ARP is timed. One uncounted
knock first fills Unbound's cache with the delegation, as on any resolver
in use; every counted name is fresh, so the final query always reaches spa.

Two settings differ from ``spa init``: the per-key grant rate and the
per-source verification rate are raised out of the way (latency, not
limits, is measured; and through a resolver every knock has the resolver
as its source).
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import serve_latency as sl

DEVICE = "eth0"  # C's interface toward inet
POOL = range(10, 250)  # C's extra addresses: 203.0.113.10-249


def prepare_addresses(world: Any) -> list[str]:
    """C's extra /32 addresses, and permanent neighbour entries for them on inet."""
    from spa.demo.internet import PUBLIC_C

    prefix = PUBLIC_C.rsplit(".", 1)[0]
    addresses = [f"{prefix}.{host}" for host in POOL]
    commands = "".join(f"address add {address}/32 dev {DEVICE}\n" for address in addresses)
    subprocess.run(["ip", "-n", world.c.netns, "-batch", "-"], input=commands, text=True, check=True,
                   capture_output=True, timeout=30)
    link = json.loads(world.c.run(["ip", "-j", "link", "show", DEVICE]).stdout)[0]
    neighbours = "".join(f"neigh replace {address} lladdr {link['address']} dev to-c nud permanent\n"
                         for address in addresses)
    subprocess.run(["ip", "-n", world.inet.netns, "-batch", "-"], input=neighbours, text=True, check=True,
                   capture_output=True, timeout=30)
    return addresses


def measure(count: int, interval: float, limit: float, deadline: float) -> list[dict[str, Any]]:
    """``count`` knocks (after one uncounted) through Unbound: serve_latency's helper replies."""
    import ipaddress

    from spa.client import tokens
    from spa.demo.internet import C_GATEWAY, RESOLVER, SERVER, ZONE, Internet
    from spa.demo.served import configure

    replies: list[dict[str, Any]] = []
    with Internet() as world:
        world.start_parent_dns()
        world.start_resolver()
        world.start_echo(sl.SERVICE)
        assert world.directory is not None
        served = configure(world.server.exec_argv, world.adopt, SERVER, ZONE, protect=f"tcp/{sl.SERVICE}",
                           parent=world.directory)
        # As spa demo serves it: the zone's NS and its address, which QNAME minimisation asks for.
        served.edit('mode = "serve"', f'mode = "serve"\nnameservers = ["ns1.{ZONE}"]\naddresses = ["{SERVER}"]')
        served.edit("key_rate = 0.5 ", "key_rate = 100000.0\nkey_burst = 100000 ")
        served.edit("source_rate = 5.0 ", "source_rate = 100000.0 ")
        key = served.keygen("carol")
        addresses = prepare_addresses(world)
        served.start()
        helper = sl.Remote(world, world.c, ["--helper", DEVICE])
        for index in range(count + 1):
            if index and time.monotonic() > deadline:
                break
            source = addresses[index % len(addresses)]
            token = tokens.extended_token(key, int(time.time()), ipaddress.ip_address(source))
            request = {"server": SERVER, "via": C_GATEWAY, "source": source, "limit": limit, "interval": interval,
                       "argv": ["dig", f"@{RESOLVER}", tokens.dns_name(token, ZONE), "+tries=1", "+time=2"]}
            reply = helper.ask(request, timeout=limit + 30)
            if not reply["closed_before"]:
                raise RuntimeError(f"DNS through Unbound: tcp/{sl.SERVICE} was open before the knock")
            if index:  # the first filled Unbound's cache with the delegation
                replies.append(reply)
        if served.process is not None and served.process.poll() is None:
            served.stop()
    return replies


def main() -> None:
    """Run alone (root): ``python3 tests/bench/via_resolver.py [COUNT]``; prints the replies' summary."""
    import sys

    count = max(1, min(int(sys.argv[1]) if len(sys.argv) > 1 else 10, 200))
    replies = measure(count, 0.00025, 3.0, time.monotonic() + 600)
    opened = [r for r in replies if r["opened"]]
    print(json.dumps({"knocks": len(replies), "opened": len(opened),
                      "total": sl.summary([r["total_ms"] for r in opened]),
                      "wire": sl.summary([r["wire_ms"] for r in opened if r.get("wire_ms") is not None])}))


if __name__ == "__main__":
    main()
