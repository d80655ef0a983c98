#!/usr/bin/env python3
"""Grant latency per firewall backend, beside spawn-a-program baselines.

Run as root: ``python3 tests/bench/grant_latency.py [--count N] [--json]``.
It makes its own network namespace (``spa-bench-<pid>``), re-runs itself
inside it, and deletes it afterwards, so the host ruleset is never touched.

Measured, each over N grants to distinct addresses (median and p99, ms):

* ``nftables``  spa's backend: the add/delete/add batch as raw netlink on
  libnftables' own socket (spa/firewall/netlink.py)
* ``nftables-text``  the same backend on its fallback path: libnftables
  parses the text batch and refreshes its cache first
* ``nft-cli``   baseline: one ``nft add element`` process per grant
* ``ipset``     spa's iptables backend: one ``ipset add ... -exist`` per grant
* ``iptables``  baseline: one ``iptables -I`` rule per grant (knockd style)

After the timed loop every method's grants are read back and counted, so a
fast but wrong backend cannot produce a figure.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from spa.core.events import Carrier, Grant, Request
from spa.firewall import FirewallSettings
from spa.firewall.iptables import IptablesBackend
from spa.firewall.nftables import NftablesBackend

SSH = Request("tcp", 22)


def address(index: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(0x0A400000 + index + 1)  # 10.64.0.1 onward


def timed(count: int, one: Callable[[int], None]) -> list[float]:
    samples = []
    for index in range(count):
        start = time.perf_counter()
        one(index)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return {"median_ms": round(statistics.median(ordered), 4), "p99_ms": round(p99, 4),
            "count": len(ordered)}


def run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


def bench_nftables(count: int, fast: bool = True) -> dict[str, float]:
    backend = NftablesBackend(FirewallSettings(protect=(SSH,)), fast=fast)
    backend.install()
    try:
        samples = timed(count, lambda i: backend.grant(
            Grant(address(i), SSH, 60, "bench", Carrier.UDP)))
        verified = len(backend.live()) == count and backend.fast_grants == fast
    finally:
        backend.uninstall()
        backend.close()
    return {**summary(samples), "verified": verified}


def bench_nftables_text(count: int) -> dict[str, float]:
    return bench_nftables(count, fast=False)


def bench_nft_cli(count: int) -> dict[str, float]:
    # An owned table refuses other processes, so the baseline gets its own.
    settings = FirewallSettings(protect=(SSH,), grant_table="spa_bench", owner=False)
    backend = NftablesBackend(settings)
    backend.install()
    try:
        samples = timed(count, lambda i: run(
            ["nft", "add", "element", "inet", "spa_bench", "grants4",
             f"{{ {address(i)} . 6 . 22 timeout 60s }}"]))
        verified = len(backend.live()) == count
    finally:
        backend.uninstall()
        backend.close()
    return {**summary(samples), "verified": verified}


def bench_ipset(count: int) -> dict[str, float]:
    backend = IptablesBackend(FirewallSettings(backend="iptables", protect=(SSH,)))
    backend.install()
    try:
        samples = timed(count, lambda i: backend.grant(
            Grant(address(i), SSH, 60, "bench", Carrier.UDP)))
        verified = len(backend.live()) == count
    finally:
        backend.uninstall()
    return {**summary(samples), "verified": verified}


def bench_iptables_cli(count: int) -> dict[str, float]:
    run(["iptables", "-w", "-N", "spa_bench"])
    try:
        samples = timed(count, lambda i: run(
            ["iptables", "-w", "-I", "spa_bench", "-s", str(address(i)),
             "-p", "tcp", "--dport", "22", "-j", "ACCEPT"]))
        listing = subprocess.run(["iptables", "-w", "-S", "spa_bench"], capture_output=True,
                                 text=True, check=True).stdout
        verified = listing.count("-j ACCEPT") == count
    finally:
        subprocess.run(["iptables", "-w", "-F", "spa_bench"], capture_output=True)
        subprocess.run(["iptables", "-w", "-X", "spa_bench"], capture_output=True)
    return {**summary(samples), "verified": verified}


METHODS = {
    "nftables": (bench_nftables, 1),
    "nftables-text": (bench_nftables_text, 1),
    "nft-cli": (bench_nft_cli, 4),  # subprocess methods get fewer rounds
    "ipset": (bench_ipset, 4),
    "iptables": (bench_iptables_cli, 4),
}


def measure(count: int) -> dict[str, dict[str, float]]:
    return {name: method(max(5, count // divisor)) for name, (method, divisor) in METHODS.items()}


def inside(args: argparse.Namespace) -> None:
    results = measure(args.count)
    if args.json:
        print(json.dumps(results))
        return
    print(f"{'method':<10} {'median ms':>10} {'p99 ms':>9} {'n':>5}  verified")
    for name, row in results.items():
        print(f"{name:<10} {row['median_ms']:>10.3f} {row['p99_ms']:>9.3f} "
              f"{row['count']:>5}  {row['verified']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=400, help="grants for the in-process run")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.count = max(5, min(args.count, 20000))  # bounded either way
    if args.inside:
        inside(args)
        return 0
    if os.geteuid() != 0:
        print("grant_latency: needs root (it makes a network namespace)", file=sys.stderr)
        return 2
    netns = f"spa-bench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        command = ["ip", "netns", "exec", netns, sys.executable, os.path.abspath(__file__),
                   "--inside", "--count", str(args.count)] + (["--json"] if args.json else [])
        return subprocess.run(command, timeout=600).returncode
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)


if __name__ == "__main__":
    sys.exit(main())
