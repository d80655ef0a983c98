"""Every way to knock, run the way a person would, in the miniature internet.

A :class:`Stage` is the world with its services and a configured, running
``spa serve``; each scenario sends one knock with the stock tool (or spa's
client) from a client namespace, times until the protected port answers,
and then logs in with ssh. ``spa demo`` prints the results as a table; the
end-to-end tests assert on the same results.
"""

from __future__ import annotations

import shlex
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass

import pyotp

from spa.core.keys import load_client_key

from .internet import PUBLIC_C, PUBLIC_NAT, SERVER, ZONE, Internet, SshAccess
from .netns import Host, wait_until
from .served import Served, configure

SSH_PORT = 22
ECHO_PORT = 2222
OPEN_WITHIN = 5.0  # seconds a knock may take to open the port before it counts as failed
STATICS = '\n[sequences.door]\nports = ["tcp/7000", "udp/8000", "tcp/9000"]\ntimeout = 5\nopen = ["tcp/22"]\n'


@dataclass(frozen=True)
class Result:
    """One row of the demo's table."""

    carrier: str
    client: str  # which host knocked: "C" or "A (behind NAT)"
    command: str  # exactly what the person typed
    opened: bool
    milliseconds: float | None  # knock sent -> TCP connect succeeded
    logged_in: bool  # ssh then ran a command on the server
    note: str = ""


@dataclass
class Stage:
    """The world, its services, and spa serve with keys for carol (C) and alice and bob (A, B)."""

    world: Internet
    served: Served
    access: SshAccess

    def spa(self, host: Host, *argv: str) -> str:
        """Run the spa CLI in ``host``'s namespace; its stdout."""
        result = self.world.run(host, [sys.executable, "-m", "spa", *argv], timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"spa {' '.join(argv)}: {result.stderr.strip()}")
        return result.stdout.strip()

    def key(self, name: str) -> str:
        return str(self.served.key_path(name))

    def closed(self, host: Host, timeout: float = 6.0) -> bool:
        """Wait (bounded) until ``host`` can no longer reach the protected port."""
        return wait_until(lambda: self.world.probe(host, SSH_PORT, 0.1) != "open", timeout, interval=0.2)

    def ssh(self, host: Host, timeout: float = 15) -> bool:
        result = self.world.run(host, [*self.world.ssh_argv(self.access), "echo", "knocked-in"], timeout=timeout)
        return result.returncode == 0 and result.stdout.strip() == "knocked-in"

    def knock(self, carrier: str, host: Host, label: str, argv: list[str], shown: str | None = None) -> Result:
        """Send one knock from ``host`` and time it until the port opens, then log in."""
        if not self.closed(host):
            return Result(carrier, label, shown or shlex.join(argv), False, None, False, "was open before the knock")
        start = time.monotonic()
        self.world.run(host, argv, timeout=30)
        opened = wait_until(lambda: self.world.probe(host, SSH_PORT, 0.05) == "open", OPEN_WITHIN, interval=0.005)
        elapsed = (time.monotonic() - start) * 1000 if opened else None
        logged_in = opened and self.ssh(host)
        return Result(carrier, label, shown or shlex.join(argv), opened, elapsed, logged_in)


def stage(world: Internet) -> Stage:
    """Start the services and a configured ``spa serve`` in ``world``."""
    world.start_parent_dns()
    world.start_resolver()
    world.start_echo(ECHO_PORT)
    access = world.start_sshd()
    # Inside the world's directory: closing the world (Ctrl-C included) removes it too.
    served = configure(world.server.exec_argv, world.adopt, SERVER, ZONE, parent=world.directory)
    served.edit('mode = "serve"', f'mode = "serve"\nnameservers = ["ns1.{ZONE}"]\naddresses = ["{SERVER}"]')
    served.config.write_text(served.config.read_text() + STATICS)
    served.keygen("carol", "--totp")
    served.keygen("dave", "--totp")
    served.keygen("alice")
    served.keygen("bob")
    # Alice and bob share the NAT's address: alice's grants admit one connection only.
    alice_store = served.directory / "keys" / "alice.toml"
    alice_store.write_text(alice_store.read_text() + "single_use = true\n")
    served.start()
    return Stage(world, served, access)


def _totp(stage: Stage, name: str) -> str:
    record = tomllib.loads((stage.served.directory / "keys" / f"{name}.toml").read_text())
    return str(pyotp.TOTP(record["totp_secret"]).now())


def scenarios(s: Stage) -> list[Callable[[], Result]]:
    """Each knock as a person would send it, in the order the demo shows them."""
    c = s.world.c
    carol = s.key("carol")

    def dns_via_resolver() -> Result:
        name = s.spa(c, "token", "--key", carol, "--via", "dns", "--ip", PUBLIC_C)
        return s.knock("DNS via Unbound", c, "C", ["nslookup", name])

    def ping() -> Result:
        pattern = s.spa(c, "token", "--key", carol, "--via", "icmp", "--ip", PUBLIC_C)
        return s.knock("ICMP ping -p", c, "C", ["ping", "-c", "1", "-W", "1", "-p", pattern, SERVER])

    def udp() -> Result:
        argv = [sys.executable, "-m", "spa", "knock", "--key", carol, "--no-wait", SERVER]
        return s.knock("UDP SPA", c, "C", argv, f"spa knock --key carol.spakey {SERVER}")

    def fixed_sequence() -> Result:
        return s.knock("fixed sequence", c, "C", ["knock", "-d", "20", SERVER, "7000", "8000:udp", "9000"])

    def one_time_sequence() -> Result:
        ports = s.spa(c, "token", "--key", carol, "--via", "sequence").split()
        return s.knock("one-time sequence", c, "C", ["knock", "-d", "20", SERVER, *ports])

    def totp_dns() -> Result:
        label = f"carol-{_totp(s, 'carol')}-{PUBLIC_C.replace('.', '-')}.{ZONE}."
        return s.knock("TOTP via DNS", c, "C", ["nslookup", label])

    def totp_ping() -> Result:
        # dave, not carol: a TOTP code is accepted once per key and 30 s step.
        pattern = f"{_key_id(s, 'dave'):04x}{_totp(s, 'dave')}"
        return s.knock("TOTP via ping", c, "C", ["ping", "-c", "1", "-W", "1", "-p", pattern, SERVER])

    def nat_single_use() -> Result:
        return _nat(s)

    return [dns_via_resolver, ping, udp, fixed_sequence, one_time_sequence, totp_dns, totp_ping, nat_single_use]


def _key_id(stage: Stage, name: str) -> int:
    return load_client_key(stage.served.key_path(name)).key_id


def _nat(s: Stage) -> Result:
    """A (behind NAT) knocks for a single-use grant and logs in; B, same public address, is then refused."""
    a, b = s.world.a, s.world.b
    argv = [sys.executable, "-m", "spa", "knock", "--key", s.key("alice"), "--ip", PUBLIC_NAT, "--no-wait", SERVER]
    shown = f"spa knock --key alice.spakey --ip {PUBLIC_NAT} {SERVER}"
    if not s.closed(a) or not s.closed(b):
        return Result("UDP, single use, NAT", "A (behind NAT)", shown, False, None, False, "was open before")
    start = time.monotonic()
    s.world.run(a, argv, timeout=30)
    # Wait for the grant without using it up: watch the supervisor's log instead of probing.
    granted = s.served.wait_log("accepted alice via udp", OPEN_WITHIN)
    elapsed = (time.monotonic() - start) * 1000 if granted else None  # to the grant: a probe would use it up
    logged_in = granted and s.ssh(a)
    b_refused = s.world.probe(b, SSH_PORT, 0.5) != "open"
    note = "B, same address, then refused" if b_refused else "B got in too: single use failed"
    return Result("UDP, single use, NAT", "A (behind NAT)", shown, granted, elapsed, logged_in and b_refused, note)


def format_table(results: list[Result]) -> str:
    """A plain-text table: carrier, client, command, result, knock to open.

    The time runs from starting the person's command (tool start-up included,
    as they would wait for it) to the first TCP connect that succeeds.
    """
    rows = [("carrier", "from", "command (as typed)", "result", "knock->open")]
    for r in results:
        verdict = "ssh ok" if r.logged_in else ("opened, ssh FAILED" if r.opened else "NOT OPENED")
        if r.note:
            verdict += f" ({r.note})"
        timing = f"{r.milliseconds:.0f} ms" if r.milliseconds is not None else "-"
        rows.append((r.carrier, r.client, r.command, verdict, timing))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"
