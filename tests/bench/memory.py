#!/usr/bin/env python3
"""spa's memory under a million unique junk knocks from 100,000 spoofed sources (issue 7).

Run as root: ``python3 tests/bench/memory.py [--count 1000000] [--sources 100000] [--rate 50000]``
(compare.py runs it too, as part of the one full benchmark run).

serve_latency's world and ``spa serve`` (the bench config: ``spa init``
defaults, per-key grant rate out of the way; per-source limits and the
tracked-source cap as shipped). The C junk sender (build/junk) in alice's
namespace writes raw IPv4 packets (IP_HDRINCL) from ``--sources`` spoofed
addresses in 10.100.0.0/15, each source sending every carrier in turn, so
each one exercises the per-source state: SPA-shaped random datagrams to
udp/62201, ICMP echoes whose data is laid out as ``ping -p TOKEN`` with a
random token, SYNs to random ports of the one-time sequence range and the
fixed sequence's ports (partial sequences per source), and DNS queries for
random token-shaped labels under the zone. Every packet is unique. The
server routes the spoofed prefix back to alice, which drops what spa and
the kernel answer.

Recorded: the supervisor's and worker's RSS at rest and their peak (VmHWM)
after the flood, what the worker counted (SIGUSR1), the kernel's capture
drops, and then one valid knock per carrier from bob that must still open.
The flood is bounded by its packet count and by time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))

import junk_sender  # noqa: E402
import serve_latency as sl  # noqa: E402

SPOOF = "10.100.0.0/15"  # 131,070 usable addresses, none of them the world's
KINDS = (f"spa:{sl.UDP_PORT}", "icmp", "syn:7000,9000,20000-59999", "dns:53")
AFTER = ("udp", "icmp", "dns", "sequence")  # valid knocks sent once the flood is over


def udp_receive_errors(world: Any) -> int:
    """The server's UDP RcvbufErrors (/proc/net/snmp): datagrams dropped at a full socket,
    here spa's DNS socket, which the capture drop counter does not see."""
    lines = [line.split() for line in world.server.run(["cat", "/proc/net/snmp"]).stdout.splitlines()
             if line.startswith("Udp:")]
    return int(lines[1][lines[0].index("RcvbufErrors")])


def flood_and_check(bench: sl.Bench, count: int, sources: int, rate: int) -> dict[str, Any]:
    """The flood at a running bench, then a valid knock per carrier; the figures."""
    from world.daemon import ZONE

    world = bench.world
    # Replies to the spoofed sources (DNS answers, echo replies, resets) go back to alice and die there.
    world.server.run(["ip", "route", "replace", SPOOF, "via", "10.77.1.2", "dev", "client1"])
    bench.settle()
    before = bench.snapshot()
    udp_errors = udp_receive_errors(world)
    seconds = min(junk_sender.MAX_SECONDS, 10.0 + 2.0 * count / max(rate, 1))
    flood = junk_sender.Flood("10.77.1.1", KINDS, rate, seconds, count, spoof=SPOOF, sources=sources, zone=ZONE)
    started = time.monotonic()
    junk = junk_sender.Junk(world, world.alice, flood)
    sent = junk.finish(timeout=seconds + 15)  # ends by itself: count reached (or its time bound)
    flood_s = time.monotonic() - started
    bench.settle(timeout=30)
    after = bench.snapshot()
    log = bench.served.log()
    knocks = {carrier: bench.knock("bob", carrier) for carrier in AFTER}
    parsed = {name: after.counters.get(name, 0) - before.counters.get(name, 0)
              for name in after.counters if name.startswith("packets.")}
    return {
        "junk_sent": sent["sent"], "junk_by_kind": sent["by_kind"], "sources": sent["sources"],
        "junk_seconds": round(sent["seconds"], 2), "junk_per_s": round(sent["sent"] / sent["seconds"]),
        "flood_wall_s": round(flood_s, 2),
        "server_rx": after.server_rx - before.server_rx,
        "worker_parsed": parsed,
        "capture_dropped": after.capture_drops - before.capture_drops,
        "dns_socket_dropped": udp_receive_errors(world) - udp_errors,
        "worker_cpu_s": round(after.worker.cpu_s - before.worker.cpu_s, 2),
        "supervisor_cpu_s": round(after.supervisor.cpu_s - before.supervisor.cpu_s, 2),
        "rss_before_mb": {"worker": before.worker.rss_mb, "supervisor": before.supervisor.rss_mb},
        "rss_after_mb": {"worker": after.worker.rss_mb, "supervisor": after.supervisor.rss_mb},
        "peak_rss_mb": {"worker": after.worker.hwm_mb, "supervisor": after.supervisor.hwm_mb},
        # RSS counts the pages the forked worker still shares with the supervisor
        # twice when summed; PSS splits them, so its sum is what the two really use.
        "pss_after_mb": {"worker": after.worker.pss_mb, "supervisor": after.supervisor.pss_mb},
        "worker_restarts": log.count("worker exited"),
        "after": {carrier: {"opened": reply["opened"], "wire_ms": reply.get("wire_ms"),
                            "total_ms": reply.get("total_ms")} for carrier, reply in knocks.items()},
    }


def measure(count: int, sources: int, rate: int, interval: float = 0.00025, limit: float = 3.0) -> dict[str, Any]:
    """A fresh world and ``spa serve`` (nothing else ran in it), flooded once."""
    from world import World
    from world.daemon import make_served, remove

    with World() as world:
        world.echo_server(sl.SERVICE, 2222)
        served = make_served(world)
        try:
            key, otp_keys, rule = sl.configure_for_bench(served, 10)
            sl.prepare_addresses(world)
            served.start()
            bench = sl.Bench(world, served, key, otp_keys, rule, interval, limit)
            return {"count": count, "sources": sources, "rate": rate, **flood_and_check(bench, count, sources, rate)}
        finally:
            if served.process is not None and served.process.poll() is None:
                served.stop()
            remove(served)


def table(memory: dict[str, Any]) -> str:
    """The docs table of one memory run."""
    peak, before = memory["peak_rss_mb"], memory["rss_before_mb"]
    parsed = ", ".join(f"{name.split('.', 1)[1]} {value:,}" for name, value in sorted(memory["worker_parsed"].items()))
    kinds = ", ".join(f"{kind} {value:,}" for kind, value in memory["junk_by_kind"].items())
    opened = ", ".join(f"{carrier} {'opened' if row['opened'] else 'NOT opened'}"
                       + (f" ({row['wire_ms']:.2f} ms)" if row["opened"] and row["wire_ms"] else "")
                       for carrier, row in memory["after"].items())
    lines = [
        "| figure | value |", "|---|---:|",
        f"| junk knocks sent (unique) | {memory['junk_sent']:,} |",
        f"| spoofed sources | {memory['sources']:,} |",
        f"| per kind | {kinds} |",
        f"| sent/s (achieved) | {memory['junk_per_s']:,} |",
        f"| worker parsed | {parsed} |",
        f"| kernel drops: capture queue, DNS socket | {memory['capture_dropped']:,}, "
        f"{memory['dns_socket_dropped']:,} |",
        f"| worker RSS at rest → peak MB | {before['worker']} → {peak['worker']} |",
        f"| supervisor RSS at rest → peak MB | {before['supervisor']} → {peak['supervisor']} |",
        f"| **peak RSS, worker + supervisor MB** | **{round(peak['worker'] + peak['supervisor'], 1)}** |",
        f"| PSS after the flood, worker + supervisor MB (shared pages once) | "
        f"{round(sum(memory.get('pss_after_mb', {}).values()), 1)} |",
        f"| worker CPU s, supervisor CPU s | {memory['worker_cpu_s']}, {memory['supervisor_cpu_s']} |",
        f"| worker restarts | {memory['worker_restarts']} |",
        f"| valid knock afterwards | {opened} |",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1_000_000, help="junk knocks (unique packets)")
    parser.add_argument("--sources", type=int, default=100_000, help="spoofed source addresses")
    parser.add_argument("--rate", type=int, default=50_000, help="junk packets per second")
    args = parser.parse_args()
    count = max(1, min(args.count, 5_000_000))
    sources = max(1, min(args.sources, 131_070))
    rate = max(1, min(args.rate, 1_000_000))
    if os.geteuid() != 0:
        print("memory: needs root (it makes network namespaces)", file=sys.stderr)
        return 2
    try:
        junk_sender.binary()
    except junk_sender.JunkMissing as error:
        print(f"memory: {error}", file=sys.stderr)
        return 2
    results = measure(count, sources, rate)
    print(json.dumps(results, indent=1))
    print(table(results), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
