"""``spa demo``: build a miniature internet in network namespaces, knock by every
carrier the way a person would, print a table, and leave nothing behind."""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from spa.errors import SpaError

TOOLS = {  # program -> Debian package
    "ip": "iproute2", "nft": "nftables", "unbound": "unbound", "sshd": "openssh-server",
    "ssh": "openssh-client", "ssh-keygen": "openssh-client", "ping": "iputils-ping",
    "dig": "dnsutils", "nslookup": "dnsutils", "knock": "knockd",
}


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "demo",
        help="knock by every carrier in a throw-away namespace world and show a table",
        description=(
            "Builds a server with nftables, sshd and spa serve, a recursive resolver (Unbound)\n"
            "reaching the knock zone by real delegation, a NAT router with two clients behind\n"
            "it and a client on its own address; knocks by DNS, ping, UDP, port sequences and\n"
            "TOTP with the stock tools; logs in with ssh after each; removes everything again.\n"
            "Needs root. Touches nothing outside the namespaces it creates."
        ),
        epilog="example:\n  sudo spa demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=run)


def missing_tools() -> list[str]:
    return [f"{tool} ({package})" for tool, package in TOOLS.items()
            if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}")]


def run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise SpaError("spa demo builds network namespaces and firewall rules inside them: run it as root")
    missing = missing_tools()
    if missing:
        packages = sorted({item.split("(")[1].rstrip(")") for item in missing})
        raise SpaError(f"missing {', '.join(missing)}: apt install {' '.join(packages)}")
    from spa.demo.internet import Internet
    from spa.demo.scenarios import format_table, scenarios, stage

    results = []
    with Internet() as world:
        print("building the world: server, resolver, parent DNS, NAT router with A and B, client C ...", flush=True)
        staged = stage(world)
        try:
            for scenario in scenarios(staged):
                result = scenario()
                mark = "ok" if result.logged_in else "FAILED"
                print(f"  {result.carrier:<22} {mark}", flush=True)
                results.append(result)
        finally:
            staged.served.stop()
            staged.served.remove()
    print()
    sys.stdout.write(format_table(results))
    print("\nAll namespaces, processes and files of the demo are gone.")
    return 0 if all(r.logged_in for r in results) else 1
