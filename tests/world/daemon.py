"""``spa serve`` in the small test world (server, alice, bob): spa.demo.served,
with this world's server address and zone."""

from __future__ import annotations

from spa.demo.served import Served, configure

from .netns import World

__all__ = ["ZONE", "Served", "make_served", "remove"]

ZONE = "knock.test"
SERVER = "10.77.1.1"


def make_served(world: World, protect: str = "tcp/22,tcp/2222", backend: str = "nftables") -> Served:
    """``spa init`` a config for the world (every carrier on, 3-second grants), not yet serving."""
    return configure(world.server.exec_argv, world.adopt, SERVER, ZONE, protect, backend)


def remove(served: Served) -> None:
    served.remove()
