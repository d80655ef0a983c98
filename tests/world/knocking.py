"""A served world ready to knock: spa serve, alice's key, and agents to probe with.

Shared by every e2e test that knocks a running ``spa serve`` (the spa CLI,
the stock tools, the stdlib client, knock.sh), so each test file only adds
how its own client is run.
"""

from __future__ import annotations

import sys

import pytest

from spa.core.keys import ClientKey, load_client_key

from .daemon import Served, make_served, remove
from .netns import Agent, Host, World, wait_until

SERVER = "10.77.1.1"
SPA_PORT = 62201
_SEND_UDP = ("import socket,sys; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); "
             "s.sendto(bytes.fromhex(sys.argv[1]),(sys.argv[2],int(sys.argv[3])))")


class Knocking:
    """spa serve with alice's key; one agent each in alice and bob to probe from."""

    def __init__(self, world: World, served: Served, name: str = "alice") -> None:
        self.world = world
        self.served = served
        self.key_path = served.directory / f"{name}.spakey"
        self.alice: Agent = world.agent(world.alice)
        self.bob: Agent = world.agent(world.bob)

    @property
    def key(self) -> ClientKey:
        return load_client_key(self.key_path)

    def probe(self, agent: Agent | None = None, port: int = 22) -> str:
        """A fresh TCP connection from ``agent`` (alice by default) to the server."""
        agent = agent or self.alice
        host = self.world.alice if agent is self.alice else self.world.bob
        return agent.probe(self.world.server_address(host), port)

    def opens(self, port: int = 22, timeout: float = 3.0) -> bool:
        return wait_until(lambda: self.probe(port=port) == "open", timeout, interval=0.05)

    def closed_before(self) -> None:
        assert self.probe() == "refused", "the protected port answered before any knock"

    def only_alice(self, other_port_closed: bool = True) -> None:
        assert self.probe(self.bob) == "refused", "the grant leaked to another address"
        if other_port_closed:
            assert self.probe(port=2222) == "refused", "the grant leaked to another port"

    def alice_sends(self, payload: bytes, port: int = SPA_PORT) -> str:
        """One UDP datagram from alice to the server, by default to the SPA datagram port."""
        return self.alice_runs(sys.executable, "-c", _SEND_UDP, payload.hex(), SERVER, str(port))

    def alice_runs(self, *argv: str) -> str:
        """Run a command in alice's namespace; its stdout and stderr."""
        result = self.world.alice.run(list(argv), check=False, timeout=30)
        return result.stdout + result.stderr


def prepare(request: pytest.FixtureRequest, *keygen: str, statics: str = "") -> Knocking:
    """Build the world and configure spa (alice's key made with ``keygen`` options,
    ``statics`` appended to spa.toml), not yet serving. Torn down by ``request``."""
    world = World()
    request.addfinalizer(world.close)
    world.build()
    world.echo_server(22, 2222)
    served = make_served(world)
    request.addfinalizer(lambda: remove(served))
    served.keygen("alice", *keygen)
    if statics:
        served.config.write_text(served.config.read_text() + statics)
    return Knocking(world, served)


def use_resolver(world: World, host: Host, nameserver: str) -> None:
    """Give ``host`` its own /etc/resolv.conf naming ``nameserver`` (removed with the world)."""
    world.spaces.etc_file(host, "resolv.conf", f"nameserver {nameserver}\noptions timeout:2 attempts:1\n")  # type: ignore[arg-type]
