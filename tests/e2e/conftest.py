"""Fixtures for end-to-end tests in network namespaces (see tests/world).

Every fixture first calls ``need_netns`` (the one skip-or-fail rule) and
registers the world's teardown before building anything, so namespaces and
processes go away even when the build or the test fails.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from world import Agent, World, need_netns  # noqa: E402

SERVICE_PORT = 22  # the protected service: gets the grants
OTHER_PORT = 2222  # also protected and listening: must stay closed


@dataclass(frozen=True)
class Scene:
    """A built world with the echo service on both ports and three agents."""

    world: World
    server: Agent  # holds the firewall backend: "the daemon"
    alice: Agent
    bob: Agent

    def probe(self, client: Agent, port: int = SERVICE_PORT, version: int = 4,
              source: str | None = None) -> str:
        """Try a new TCP connection from ``client`` to the server."""
        host = self.world.alice if client is self.alice else self.world.bob
        return client.probe(self.world.server_address(host, version), port, source=source)


@pytest.fixture
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    need_netns()
    built = World()
    request.addfinalizer(built.close)
    built.build()
    yield built


def make_scene(world: World, settings: dict[str, object]) -> Scene:
    world.echo_server(SERVICE_PORT, OTHER_PORT)
    scene = Scene(world, world.agent(world.server), world.agent(world.alice), world.agent(world.bob))
    scene.server.call("backend", settings=settings)
    scene.server.call("install")
    return scene


PROTECT = [f"tcp/{SERVICE_PORT}", f"tcp/{OTHER_PORT}"]


@pytest.fixture
def nft_scene(world: World) -> Scene:
    need_netns("nft", libraries=("nftables",))
    return make_scene(world, {"backend": "nftables", "protect": PROTECT})


@pytest.fixture
def iptables_scene(world: World) -> Scene:
    need_netns("iptables", "ip6tables", "ipset")
    return make_scene(world, {"backend": "iptables", "protect": PROTECT})
