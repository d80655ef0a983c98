"""A recursive resolver (Unbound) for the small world, on a link of its own.

    alice 10.77.1.2 --- 10.77.1.1 server 10.77.3.1 --- 10.77.3.2 resolver

The server namespace forwards between its links, so alice asks the
resolver and the resolver asks spa for the knock zone (a stub zone), as a
knock through an ISP's resolver does: spa sees the query come from
10.77.3.2, in 0x20 mixed case, and only an extended token can name alice.
The resolver has no route anywhere else, and answers nothing outside the
knock zone, so no query can leave the world. Torn down with the world.
"""

from __future__ import annotations

from pathlib import Path

from .netns import Host, World, run, wait_until

RESOLVER = "10.77.3.2"
SERVER_SIDE = "10.77.3.1"


def unbound_config(zone: str, directory: Path) -> str:
    """Unbound as a plain resolver: iterator only, 0x20 on, the knock zone by stub."""
    return "\n".join([
        "server:",
        f"    interface: {RESOLVER}",
        "    port: 53",
        "    do-ip6: no",
        "    do-daemonize: no",
        '    chroot: ""',
        '    username: ""',
        f'    directory: "{directory}"',
        f'    pidfile: "{directory / "unbound.pid"}"',
        f'    logfile: "{directory / "unbound.log"}"',
        "    use-syslog: no",
        "    verbosity: 1",
        "    use-caps-for-id: yes",
        # One query per name: with minimisation Unbound would first ask for the
        # zone's parts, queries that carry no token and would only blur the capture.
        "    qname-minimisation: no",
        '    module-config: "iterator"',
        "    access-control: 0.0.0.0/0 refuse",
        "    access-control: 10.77.0.0/16 allow",
        # .test is one of Unbound's built-in empty zones; the knock zone must
        # resolve, everything else is refused without a query.
        '    local-zone: "test." nodefault',
        '    local-zone: "." refuse',
        f'    local-zone: "{zone}." transparent',
        "",
        "stub-zone:",
        f'    name: "{zone}"',
        f"    stub-addr: {SERVER_SIDE}",
        "",
        "remote-control:",
        "    control-enable: no",
    ]) + "\n"


def add_resolver(world: World, zone: str, directory: Path, timeout: float = 10.0) -> Host:
    """The resolver namespace, its link to the server, routes, and Unbound running in it."""
    host = Host(world.spaces.name("resolver"), RESOLVER)
    world.spaces.add(host)  # type: ignore[arg-type] - any host with a tagged netns name will do
    server = world.server.netns
    run(["ip", "-n", server, "link", "add", "resolver", "type", "veth", "peer", "name", "uplink", "netns", host.netns])
    for namespace, device, address in ((server, "resolver", SERVER_SIDE), (host.netns, "uplink", RESOLVER)):
        run(["ip", "-n", namespace, "addr", "add", f"{address}/24", "dev", device])
        run(["ip", "-n", namespace, "link", "set", device, "up"])
    run(["ip", "-n", host.netns, "route", "add", "10.77.1.0/24", "via", SERVER_SIDE])
    run(["ip", "-n", world.alice.netns, "route", "add", "10.77.3.0/24", "via", "10.77.1.1"])
    world.server.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    config = directory / "unbound.conf"
    config.write_text(unbound_config(zone, directory))
    log = directory / "unbound.log"
    log.touch()
    process = world.spaces.popen(host, ["unbound", "-d", "-c", str(config)],  # type: ignore[arg-type]
                                 directory / "unbound.stderr")
    if not wait_until(lambda: "start of service" in log.read_text() or process.poll() is not None, timeout):
        raise RuntimeError(f"unbound did not start:\n{log.read_text()}")
    if process.poll() is not None:
        stderr = (directory / "unbound.stderr").read_text()
        raise RuntimeError(f"unbound exited {process.returncode}:\n{log.read_text()}{stderr}")
    return host
