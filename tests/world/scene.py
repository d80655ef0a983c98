"""A built world with the protected service running and one agent per host.

Shared by the e2e fixtures and tests (kept here, not in a conftest, because
``from conftest import`` is ambiguous once several conftest files exist).
"""

from __future__ import annotations

from dataclasses import dataclass

from .netns import Agent, World

SERVICE_PORT = 22  # the protected service: gets the grants
OTHER_PORT = 2222  # also protected and listening: must stay closed
PROTECT = [f"tcp/{SERVICE_PORT}", f"tcp/{OTHER_PORT}"]
ALICE4, ALICE6 = "10.77.1.2", "fd77:1::2"


@dataclass(frozen=True)
class Scene:
    """The echo service on both ports, a backend on the server, two clients."""

    world: World
    server: Agent  # holds the firewall backend: "the daemon"
    alice: Agent
    bob: Agent

    def probe(self, client: Agent, port: int = SERVICE_PORT, version: int = 4,
              source: str | None = None) -> str:
        """Try a new TCP connection from ``client`` to the server."""
        host = self.world.alice if client is self.alice else self.world.bob
        return client.probe(self.world.server_address(host, version), port, source=source)

    def grant(self, address: str = ALICE4, seconds: int = 2, **extra: object) -> float:
        """Grant tcp/22 (as key "alice"); return the monotonic time it was made."""
        import time

        made = time.monotonic()
        self.server.call("grant", address=address, request=f"tcp/{SERVICE_PORT}",
                         seconds=seconds, key="alice", **extra)
        return made


def make_scene(world: World, settings: dict[str, object]) -> Scene:
    """Start the echo service and agents, open the backend and install it."""
    world.echo_server(SERVICE_PORT, OTHER_PORT)
    scene = Scene(world, world.agent(world.server), world.agent(world.alice), world.agent(world.bob))
    scene.server.call("backend", settings=settings)
    scene.server.call("install")
    return scene
