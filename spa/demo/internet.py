"""The internet in miniature: the world ``spa demo`` and the end-to-end tests knock through.

::

     server 192.0.2.10          resolver 192.0.2.53       parent 192.0.2.54
            2001:db8:2::10      Unbound (recursive)       example.test (dnslib)
     spa, sshd :22, echo
            |                          |                         |
            +--------------------------+-------------------------+
                                       |  bridge dc: 192.0.2.1/24, 2001:db8:2::1/64
                           +-----------+-----------+
                           |         inet          |  forwards IPv4 and IPv6; no route out
                           +----+-------------+----+
             198.51.100.1/24    |             |    203.0.113.1/24, 2001:db8:7::1/64
                                |             |
       wan 198.51.100.2    +----+---+    +----+----------------+
       nft masquerade      | router |    | c    203.0.113.7    |
       lan 10.0.0.1/24     +----+---+    |      2001:db8:7::7  |
                                |        +---------------------+
                     +----------+---------+
                     |                    |
                a 10.0.0.2           b 10.0.0.3

Every namespace is joined to ``inet`` (or, for A and B, to the router) by a
veth pair created inside one namespace with its peer moved straight into
the other, so nothing ever appears in the root namespace, and no route
leads out of the world. The knock zone ``knock.example.test`` is found
the way a real resolver finds it: Unbound (QNAME minimisation, 0x20 case
randomisation) asks the parent's server, which refers it to
``ns1.knock.example.test`` = 192.0.2.10, the spa server. A and B share
the router's public address, the case that defeats classic knocking.
See docs/world.md.
"""

from __future__ import annotations

import selectors
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .netns import Host, Namespaces, run, sigint_deferred, wait_until

PARENT_ZONE = "example.test"
ZONE = "knock.example.test"
PARENT_NS = f"ns1.{PARENT_ZONE}"  # the parent zone's own name server (the parent namespace)
ZONE_NS = f"ns1.{ZONE}"  # the knock zone's name server (the spa server), glued in the parent

SERVER = "192.0.2.10"
SERVER6 = "2001:db8:2::10"
RESOLVER = "192.0.2.53"
PARENT = "192.0.2.54"
DC_GATEWAY = "192.0.2.1"  # inet's address on the server/resolver/parent LAN
DC_GATEWAY6 = "2001:db8:2::1"
PUBLIC_NAT = "198.51.100.2"  # the router's public address: A and B appear as this
NAT_GATEWAY = "198.51.100.1"
LAN_GATEWAY = "10.0.0.1"  # the router on A and B's LAN
CLIENT_A = "10.0.0.2"
CLIENT_B = "10.0.0.3"
PUBLIC_C = "203.0.113.7"
PUBLIC_C6 = "2001:db8:7::7"
C_GATEWAY = "203.0.113.1"
C_GATEWAY6 = "2001:db8:7::1"
PREFIXES = ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "10.0.0.0/24",
            "2001:db8:2::/64", "2001:db8:7::/64")  # the world's networks (Unbound serves these)

ROLES = ("inet", "server", "resolver", "parent", "router", "a", "b", "c")
NAT_TABLE = "spa_demo_nat"
START_TIMEOUT = 10.0  # seconds any service gets to come up
PYTHON = sys.executable


@dataclass(frozen=True)
class SshAccess:
    """What a client needs to log in to the server's sshd: root's key and a known_hosts file."""

    key: Path
    known_hosts: Path
    user: str = "root"
    address: str = SERVER


@dataclass
class Echo:
    """A running echo service; ``peers()`` are the addresses it has accepted connections from."""

    process: subprocess.Popen[Any]
    log_path: Path
    ports: tuple[int, ...]

    def peers(self) -> list[str]:
        """Every connection's source address, in order (IPv4 shown plainly)."""
        try:
            lines = self.log_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [line.split()[1] for line in lines if line.startswith("peer ")]


class ProberError(RuntimeError):
    """The probe helper in a client namespace died or fell silent."""


class Prober:
    """Proxy for one ``spa.demo.prober`` process: fresh TCP connection attempts on request."""

    def __init__(self, host: Host, process: subprocess.Popen[str]) -> None:
        self.host = host
        self.process = process
        self.lock = threading.Lock()
        self.selector = selectors.DefaultSelector()
        assert process.stdout is not None
        self.selector.register(process.stdout, selectors.EVENT_READ)
        if self._line(START_TIMEOUT) != "ready":
            raise ProberError(f"prober in {host.netns} did not start")

    def probe(self, address: str, port: int, timeout: float) -> str:
        with self.lock:
            assert self.process.stdin is not None
            try:
                self.process.stdin.write(f"{address} {port} {timeout}\n")
                self.process.stdin.flush()
            except (BrokenPipeError, ValueError) as error:
                raise ProberError(f"prober in {self.host.netns} is gone") from error
            return self._line(timeout + 5)

    def close(self) -> None:
        self.selector.close()

    def _line(self, timeout: float) -> str:
        assert self.process.stdout is not None
        if not self.selector.select(timeout):
            raise ProberError(f"prober in {self.host.netns} silent for {timeout}s")
        line = self.process.stdout.readline()
        if not line:
            raise ProberError(f"prober in {self.host.netns} exited ({self.process.poll()})")
        return line.strip()


def _wait_for_log(process: subprocess.Popen[Any], path: Path, text: str, what: str,
                  timeout: float = START_TIMEOUT) -> None:
    """Wait (bounded) until ``text`` shows up in ``path``; raise with the log if not or if it died."""
    def done() -> bool:
        return process.poll() is not None or (path.exists() and text in path.read_text(errors="replace"))

    ready = wait_until(done, timeout, interval=0.02)
    if process.poll() is not None or not ready:
        log = path.read_text(errors="replace") if path.exists() else ""
        state = f"exited {process.returncode}" if process.poll() is not None else f"not ready after {timeout}s"
        raise RuntimeError(f"{what} {state}:\n{log[-2000:]}")


def _program(name: str) -> str:
    """Absolute path of a system program (sshd insists on one; /usr/sbin may be off PATH)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if found is None:
        raise RuntimeError(f"{name} is not installed")
    return found


@dataclass
class Internet:
    """The miniature internet. A context manager: built on entry, removed on exit, even on Ctrl-C.

    Hosts are attributes (``inet``, ``server``, ``resolver``, ``parent``,
    ``router``, ``a``, ``b``, ``c``) and in ``hosts`` by role. Files (logs,
    configs, keys) live in ``directory``, removed on close unless
    ``keep_files``. Methods that take a host accept a :class:`Host` or a role.
    """

    keep_files: bool = False
    spaces: Namespaces = field(default_factory=Namespaces)
    directory: Path | None = None
    hosts: dict[str, Host] = field(init=False, repr=False)
    _probers: dict[str, Prober] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        name = self.spaces.name
        self.hosts = {
            "inet": Host(name("inet"), DC_GATEWAY, DC_GATEWAY6),
            "server": Host(name("server"), SERVER, SERVER6),
            "resolver": Host(name("resolver"), RESOLVER),
            "parent": Host(name("parent"), PARENT),
            "router": Host(name("router"), PUBLIC_NAT),
            "a": Host(name("a"), CLIENT_A),
            "b": Host(name("b"), CLIENT_B),
            "c": Host(name("c"), PUBLIC_C, PUBLIC_C6),
        }

    @property
    def inet(self) -> Host:
        """The internet's core router: every public network meets here."""
        return self.hosts["inet"]

    @property
    def server(self) -> Host:
        """192.0.2.10 and 2001:db8:2::10: where spa, sshd and the echo service run."""
        return self.hosts["server"]

    @property
    def resolver(self) -> Host:
        """192.0.2.53: Unbound, every client's recursive resolver."""
        return self.hosts["resolver"]

    @property
    def parent(self) -> Host:
        """192.0.2.54: the authoritative server of example.test."""
        return self.hosts["parent"]

    @property
    def router(self) -> Host:
        """198.51.100.2 outside, 10.0.0.1 inside: the NAT router of A and B."""
        return self.hosts["router"]

    @property
    def a(self) -> Host:
        """Client A, 10.0.0.2 behind the NAT."""
        return self.hosts["a"]

    @property
    def b(self) -> Host:
        """Client B, 10.0.0.3 behind the same NAT."""
        return self.hosts["b"]

    @property
    def c(self) -> Host:
        """Client C on its own public addresses, 203.0.113.7 and 2001:db8:7::7."""
        return self.hosts["c"]

    # -- life cycle -----------------------------------------------------

    def __enter__(self) -> Internet:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def build(self) -> None:
        """Create the namespaces, links, addresses, routes, NAT and resolv.conf files."""
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="spa-world-"))
        # No duplicate address detection: link-local addresses would stay
        # tentative for a second or two, and IPv6 with them. inet routes
        # between all public networks; the router forwards its LAN out.
        no_dad = ("net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
        forwarding = {"inet": ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"),
                      "router": ("net.ipv4.ip_forward=1",)}
        for role in ROLES:
            self.spaces.add(self.hosts[role])
            self._sysctl(self.hosts[role], *no_dad, *forwarding.get(role, ()))
        inet, router = self.inet.netns, self.router.netns
        # The "data centre" LAN: server, resolver and parent on one bridge in inet.
        self._ip(inet, "link", "add", "dc", "type", "bridge")
        self._ip(inet, "addr", "add", f"{DC_GATEWAY}/24", "dev", "dc")
        self._ip(inet, "addr", "add", f"{DC_GATEWAY6}/64", "dev", "dc", "nodad")
        self._ip(inet, "link", "set", "dc", "up")
        for role in ("server", "resolver", "parent"):
            host = self.hosts[role]
            self._veth(inet, f"to-{role}", host.netns, "eth0", bridge="dc")
            self._address(host, "eth0", f"{host.address}/24", DC_GATEWAY)
        self._address(self.server, "eth0", f"{SERVER6}/64", DC_GATEWAY6)
        # The router's uplink and C's line, each its own network on inet.
        self._veth(inet, "to-router", router, "wan")
        self._address(self.inet, "to-router", f"{NAT_GATEWAY}/24")
        self._address(self.router, "wan", f"{PUBLIC_NAT}/24", NAT_GATEWAY)
        self._veth(inet, "to-c", self.c.netns, "eth0")
        self._address(self.inet, "to-c", f"{C_GATEWAY}/24")
        self._address(self.inet, "to-c", f"{C_GATEWAY6}/64")
        self._address(self.c, "eth0", f"{PUBLIC_C}/24", C_GATEWAY)
        self._address(self.c, "eth0", f"{PUBLIC_C6}/64", C_GATEWAY6)
        # Behind the router: a LAN bridge with A and B, masqueraded on the way out.
        self._ip(router, "link", "add", "lan", "type", "bridge")
        self._ip(router, "addr", "add", f"{LAN_GATEWAY}/24", "dev", "lan")
        self._ip(router, "link", "set", "lan", "up")
        for role in ("a", "b"):
            host = self.hosts[role]
            self._veth(router, f"to-{role}", host.netns, "eth0", bridge="lan")
            self._address(host, "eth0", f"{host.address}/24", LAN_GATEWAY)
        nat = self.directory / "nat.nft"
        nat.write_text(
            f"table ip {NAT_TABLE} {{\n"
            "  chain postrouting {\n"
            "    type nat hook postrouting priority srcnat; policy accept;\n"
            '    oifname "wan" masquerade\n'
            "  }\n"
            "}\n"
        )
        self.router.run([_program("nft"), "-f", str(nat)])
        for role in ("a", "b", "c"):
            self.spaces.etc_file(self.hosts[role], "resolv.conf",
                                 f"nameserver {RESOLVER}\noptions timeout:2 attempts:2\n")

    def close(self) -> None:
        """Kill every process (by pid), remove every namespace, /etc/netns entry and file. Idempotent."""
        with sigint_deferred():
            while self._probers:
                self._probers.popitem()[1].close()  # their processes are tracked by spaces: killed there
            self.spaces.close()
            if self.directory is not None and not self.keep_files:
                shutil.rmtree(self.directory, ignore_errors=True)
                self.directory = None

    # -- building blocks ------------------------------------------------

    @staticmethod
    def _ip(netns: str, *argv: str) -> None:
        run(["ip", "-n", netns, *argv])

    def _sysctl(self, host: Host, *settings: str) -> None:
        host.run(["sysctl", "-q", "-w", *settings])

    def _veth(self, netns: str, name: str, peer_netns: str, peer_name: str, bridge: str | None = None) -> None:
        """A veth pair made in ``netns`` with its peer moved straight into ``peer_netns``; both up."""
        self._ip(netns, "link", "add", "name", name, "type", "veth", "peer", "name", peer_name, "netns", peer_netns)
        if bridge is not None:
            self._ip(netns, "link", "set", name, "master", bridge)
        self._ip(netns, "link", "set", name, "up")
        self._ip(peer_netns, "link", "set", peer_name, "up")

    def _address(self, host: Host, device: str, prefix: str, gateway: str | None = None) -> None:
        extra = ["nodad"] if ":" in prefix else []  # usable at once, no duplicate detection wait
        self._ip(host.netns, "addr", "add", prefix, "dev", device, *extra)
        if gateway is not None:
            family = "-6" if ":" in gateway else "-4"
            run(["ip", "-n", host.netns, family, "route", "add", "default", "via", gateway])

    def _host(self, host: Host | str) -> Host:
        return self.hosts[host] if isinstance(host, str) else host

    def _file(self, name: str) -> Path:
        if self.directory is None:
            raise RuntimeError("the world is not built")
        return self.directory / name

    # -- processes ------------------------------------------------------

    def popen(self, host: Host | str, argv: list[str], log_path: Path | None = None) -> subprocess.Popen[Any]:
        """Start ``argv`` in ``host``, output to ``log_path`` (or nowhere); killed on close."""
        return self.spaces.popen(self._host(host), argv, log_path)

    def adopt(self, process: subprocess.Popen[Any]) -> None:
        """Kill ``process`` (started elsewhere, by us) when the world closes."""
        self.spaces.adopt(process)

    def run(self, host: Host | str, argv: list[str], timeout: float = 10,
            check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in ``host`` to completion (bounded); the result, whatever its exit status."""
        return self._host(host).run(argv, check=check, timeout=timeout)

    # -- services -------------------------------------------------------

    def start_parent_dns(self) -> subprocess.Popen[Any]:
        """The parent zone's authoritative server on 192.0.2.54, delegating the knock zone to the server."""
        log = self._file("parent_dns.log")
        process = self.popen(self.parent, [
            PYTHON, "-m", "spa.demo.parent_dns", "--listen", PARENT, "--zone", PARENT_ZONE,
            "--ns", PARENT_NS, PARENT, "--delegate", ZONE, ZONE_NS, SERVER,
        ], log)
        _wait_for_log(process, log, "ready", "the parent zone's DNS server")
        return process

    def unbound_config(self) -> str:
        """Unbound as a plain recursive resolver: iterator only (no DNSSEC), QNAME minimisation, 0x20."""
        directory = self._file(".")
        lines = [
            "server:",
            f"    interface: {RESOLVER}",
            "    port: 53",
            "    do-ip6: no",  # the delegation has IPv4 glue only
            "    do-daemonize: no",
            '    chroot: ""',
            '    username: ""',
            f'    directory: "{directory}"',
            f'    pidfile: "{directory / "unbound.pid"}"',
            f'    logfile: "{directory / "unbound.log"}"',
            "    use-syslog: no",
            "    log-time-ascii: yes",
            "    verbosity: 1",
            "    qname-minimisation: yes",
            "    use-caps-for-id: yes",
            '    module-config: "iterator"',
            "    do-not-query-localhost: no",
            # A name server that was silent (spa not started yet, or restarted)
            # is tried again within seconds, not shunned for the default 15 minutes.
            "    infra-host-ttl: 5",
            "    infra-keep-probing: yes",
            "    access-control: 0.0.0.0/0 refuse",
            *(f"    access-control: {prefix} allow" for prefix in PREFIXES),
            # .test is one of Unbound's built-in empty zones; undo that, and answer
            # nothing outside example.test at all: no query ever heads for a real root.
            '    local-zone: "test." nodefault',
            '    local-zone: "." refuse',
            f'    local-zone: "{PARENT_ZONE}." transparent',
            "",
            "stub-zone:",
            f'    name: "{PARENT_ZONE}"',
            f"    stub-addr: {PARENT}",
            "",
            "remote-control:",
            "    control-enable: no",
        ]
        return "\n".join(lines) + "\n"

    def start_resolver(self) -> subprocess.Popen[Any]:
        """Unbound on 192.0.2.53, reaching example.test by stub-zone and the knock zone by delegation."""
        config = self._file("unbound.conf")
        config.write_text(self.unbound_config())
        log = self._file("unbound.log")
        log.touch()
        process = self.popen(self.resolver, [_program("unbound"), "-d", "-c", str(config)],
                             self._file("unbound.stderr"))
        _wait_for_log(process, log, "start of service", "unbound")
        return process

    def start_echo(self, *ports: int, host: Host | str = "server") -> Echo:
        """The TCP echo service on ``ports`` (dual-stack), logging each peer address; waits until listening."""
        target = self._host(host)
        role = next(name for name, known in self.hosts.items() if known == target)
        log = self._file(f"echo-{role}-{'-'.join(map(str, ports))}.log")
        process = self.popen(target, [PYTHON, "-m", "spa.demo.echo", *map(str, ports)], log)
        _wait_for_log(process, log, "ready", "the echo service")
        return Echo(process, log, tuple(ports))

    def start_sshd(self) -> SshAccess:
        """A real OpenSSH sshd on the server's port 22: fresh host key, fresh key for root, keys only."""
        keys = self._file("ssh")
        keys.mkdir(mode=0o700, exist_ok=True)
        keygen = _program("ssh-keygen")
        for name in ("host", "root"):
            if not (keys / name).exists():
                run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", f"spa-demo-{name}", "-f", str(keys / name)],
                    timeout=30)
        (keys / "authorized_keys").write_text((keys / "root.pub").read_text())
        config = keys / "sshd_config"
        config.write_text(
            "Port 22\nListenAddress 0.0.0.0\nListenAddress ::\n"
            f"HostKey {keys / 'host'}\nAuthorizedKeysFile {keys / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\nPubkeyAuthentication yes\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "UsePAM no\nStrictModes no\nPidFile none\nUseDNS no\nLogLevel INFO\n"
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
        log = self._file("sshd.log")
        process = self.popen(self.server, [_program("sshd"), "-D", "-e", "-f", str(config)], log)
        _wait_for_log(process, log, "Server listening on", "sshd")
        known = keys / "known_hosts"
        host_key = (keys / "host.pub").read_text().split()
        known.write_text(f"{SERVER},{SERVER6} {host_key[0]} {host_key[1]}\n")
        return SshAccess(keys / "root", known)

    def ssh_argv(self, access: SshAccess, connect_timeout: float = 5, address: str | None = None) -> list[str]:
        """See :func:`ssh_argv`."""
        return ssh_argv(access, connect_timeout, address)

    # -- probing --------------------------------------------------------

    def prober(self, client: Host | str) -> Prober:
        """The probe helper of ``client``, started on first use."""
        host = self._host(client)
        prober = self._probers.get(host.netns)
        if prober is None or prober.process.poll() is not None:
            process = self.spaces.popen(host, [PYTHON, "-m", "spa.demo.prober"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            prober = Prober(host, process)
            self._probers[host.netns] = prober
        return prober

    def probe(self, client: Host | str, port: int, timeout: float = 0.5, address: str = SERVER) -> str:
        """One fresh TCP connection attempt from ``client`` to ``address``:``port``.

        ``open``, ``dropped`` (no answer within ``timeout``), ``refused``,
        ``unreachable`` or ``error:...``.
        """
        prober = self.prober(client)
        try:
            return prober.probe(address, port, timeout)
        except ProberError:
            self.spaces.kill(prober.process)  # out of step now: the next probe starts a fresh one
            self._probers.pop(prober.host.netns, None)
            prober.close()
            raise


def ssh_argv(access: SshAccess, connect_timeout: float = 5, address: str | None = None) -> list[str]:
    """``ssh ... root@192.0.2.10``, ready for the remote command to be appended.

    Every option is set here because ssh keeps the first value it sees of an
    option; ``connect_timeout`` bounds how long a dropped SYN keeps it waiting.
    """
    return [
        "ssh", "-F", "/dev/null", "-o", "BatchMode=yes",
        "-o", f"UserKnownHostsFile={access.known_hosts}", "-o", "StrictHostKeyChecking=yes",
        "-o", f"ConnectTimeout={connect_timeout:g}", "-o", "IdentitiesOnly=yes", "-i", str(access.key),
        f"{access.user}@{address or access.address}",
    ]
