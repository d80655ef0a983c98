"""Fixtures for end-to-end tests in network namespaces (see tests/world).

Every fixture first calls ``need_netns`` (the one skip-or-fail rule) and
registers the world's teardown before building anything, so namespaces and
processes go away even when the build or the test fails.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from world import World, need_netns  # noqa: E402
from world.scene import PROTECT, Scene, make_scene  # noqa: E402


@pytest.fixture
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    need_netns()
    built = World()
    request.addfinalizer(built.close)
    built.build()
    yield built


@pytest.fixture
def nft_scene(world: World) -> Scene:
    need_netns("nft", libraries=("nftables",))
    return make_scene(world, {"backend": "nftables", "protect": PROTECT})


@pytest.fixture
def iptables_scene(world: World) -> Scene:
    need_netns("iptables", "ip6tables", "ipset")
    return make_scene(world, {"backend": "iptables", "protect": PROTECT})
