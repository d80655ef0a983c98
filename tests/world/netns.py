"""Hosts built from network namespaces, and the processes running in them.

Layout (names carry the test run's pid so parallel runs never collide)::

    alice 10.77.1.2 fd77:1::2 --veth-- 10.77.1.1 fd77:1::1 server
    bob   10.77.2.2 fd77:2::2 --veth-- 10.77.2.1 fd77:2::1 server

Only private prefixes, only inside namespaces this module made. IPv6
addresses are added ``nodad`` so they are usable at once. Every process is
started by us and killed by its pid; :meth:`World.close` undoes everything
and is safe to call twice or after a partial build. ``run`` and ``wait_until``
come from spa.demo.netns; ``Host`` stays here (it names addresses toward the
server by IP version, which the demo world's hosts do not need).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# One copy of the bounded primitives, shared with spa demo's world; re-exported
# here because many tests import them from world.netns.
from spa.demo.netns import Namespaces, run, wait_until

__all__ = ["Agent", "AgentError", "Host", "World", "run", "wait_until"]

HERE = Path(__file__).resolve().parent
AGENT = HERE / "agent.py"
REPO = HERE.parents[1]


@dataclass(frozen=True)
class Host:
    """One namespace; ``addr4``/``addr6`` are its addresses toward the server
    (for the server itself, see :meth:`World.server_address`)."""

    netns: str
    addr4: str = ""
    addr6: str = ""

    def exec_argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]

    def run(self, argv: list[str], *, check: bool = True, timeout: float = 10) -> subprocess.CompletedProcess[str]:
        return run(self.exec_argv(argv), check=check, timeout=timeout)

    def address(self, version: int) -> str:
        return self.addr4 if version == 4 else self.addr6


class AgentError(RuntimeError):
    """The agent answered ``ok: false``."""


class Agent:
    """Proxy for one agent.py process inside a namespace (see agent.py)."""

    def __init__(self, host: Host, process: subprocess.Popen[str]) -> None:
        self.host = host
        self.process = process
        self.pid = process.pid
        self._selector = selectors.DefaultSelector()
        assert process.stdout is not None
        self._selector.register(process.stdout, selectors.EVENT_READ)
        self._read_line(timeout=10)  # the "ready" line

    def call(self, op: str, *, wait: float = 10, **arguments: Any) -> dict[str, Any]:
        """Send one request; return the reply or raise AgentError.

        ``wait`` bounds how long we wait for the answer; ``arguments`` (which
        may include the op's own ``timeout``) go to the agent."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **arguments}) + "\n")
        self.process.stdin.flush()
        reply = json.loads(self._read_line(wait))
        if not reply.get("ok"):
            raise AgentError(f"{op}: {reply.get('error')}")
        return reply

    def _read_line(self, timeout: float) -> str:
        assert self.process.stdout is not None
        if not self._selector.select(timeout):
            raise TimeoutError(f"agent in {self.host.netns} silent for {timeout}s")
        line = self.process.stdout.readline()
        if not line:
            raise AgentError(f"agent in {self.host.netns} exited ({self.process.poll()})")
        return line

    def probe(self, host: str, port: int, timeout: float = 0.4, source: str | None = None) -> str:
        return str(self.call("probe", host=host, port=port, timeout=timeout, source=source)["result"])

    def kill(self) -> None:
        """SIGKILL by pid (the process is ours) and reap it."""
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self._selector.close()


@dataclass
class World:
    """A server and two clients (alice, bob). Use as a context manager.

    Namespaces and processes are kept by spa.demo's :class:`Namespaces`, the
    one place that knows how to remove them again, Ctrl-C included.
    """

    spaces: Namespaces = field(default_factory=Namespaces)
    server: Host = field(init=False)
    alice: Host = field(init=False)
    bob: Host = field(init=False)

    def __post_init__(self) -> None:
        self.server = Host(self.spaces.name("server"))
        self.alice = Host(self.spaces.name("alice"), "10.77.1.2", "fd77:1::2")
        self.bob = Host(self.spaces.name("bob"), "10.77.2.2", "fd77:2::2")

    @property
    def tag(self) -> str:
        return self.spaces.tag

    def __enter__(self) -> World:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def build(self) -> None:
        for host in (self.server, self.alice, self.bob):
            self.spaces.add(host)  # type: ignore[arg-type] - any host with a netns name will do
        for index, client in ((1, self.alice), (2, self.bob)):
            inside, outside = f"client{index}", "uplink"
            # Created inside the server namespace, peer moved straight into the
            # client's: no interface ever appears in the root namespace.
            run(["ip", "-n", self.server.netns, "link", "add", inside, "type", "veth",
                 "peer", "name", outside, "netns", client.netns])
            for host, device, last in ((self.server, inside, 1), (client, outside, 2)):
                run(["ip", "-n", host.netns, "addr", "add", f"10.77.{index}.{last}/24", "dev", device])
                run(["ip", "-n", host.netns, "addr", "add", f"fd77:{index}::{last}/64",
                     "dev", device, "nodad"])
                run(["ip", "-n", host.netns, "link", "set", device, "up"])

    def server_address(self, client: Host, version: int = 4) -> str:
        """The server's address on the link to ``client``."""
        index = 1 if client is self.alice else 2
        return f"10.77.{index}.1" if version == 4 else f"fd77:{index}::1"

    def popen(self, host: Host, argv: list[str]) -> subprocess.Popen[str]:
        """Start ``argv`` in ``host`` with pipes to talk to it; killed on close."""
        return self.spaces.popen(host, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,  # type: ignore[arg-type]
                                 cwd=REPO)

    def adopt(self, process: subprocess.Popen[str]) -> None:
        """Kill ``process`` (started elsewhere, by us) when the world closes."""
        self.spaces.adopt(process)

    def agent(self, host: Host) -> Agent:
        """Start agent.py inside ``host`` (``ip netns exec`` execs: same pid)."""
        return Agent(host, self.popen(host, [sys.executable, str(AGENT)]))

    def echo_server(self, *ports: int) -> subprocess.Popen[str]:
        """Start the echo service (spa.demo.echo) on the server and wait until it listens."""
        process = self.popen(self.server, [sys.executable, "-m", "spa.demo.echo", *map(str, ports)])
        stdout = process.stdout
        assert stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            if not selector.select(10) or stdout.readline().strip() != "ready":
                raise RuntimeError("echo server did not start")
        # It then prints a line per connection: keep reading so the pipe never fills.
        threading.Thread(target=_drain, args=(stdout,), daemon=True).start()
        return process

    def close(self) -> None:
        """Kill our processes by pid, then delete our namespaces (and /etc/netns entries)."""
        self.spaces.close()


def _drain(stream: Any) -> None:
    """Read ``stream`` to its end, discarding it."""
    for _ in stream:
        pass
