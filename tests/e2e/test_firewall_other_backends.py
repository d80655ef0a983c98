"""The iptables/ipset and command backends doing the same round trip."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from world import World, need_netns
from world.netns import AgentError
from world.scene import ALICE4, ALICE6, OTHER_PORT, PROTECT, SERVICE_PORT, Scene, make_scene

pytestmark = pytest.mark.netns


def grant(scene: Scene, address: str = ALICE4, seconds: int = 2, **extra: object) -> float:
    return scene.grant(address, seconds, **extra)


def test_iptables_round_trip(iptables_scene: Scene) -> None:
    s = iptables_scene
    assert s.probe(s.alice) == "refused"
    made = grant(s, seconds=2)
    assert s.probe(s.alice) == "open"
    assert s.probe(s.alice, OTHER_PORT) == "refused"
    assert s.probe(s.bob) == "refused"
    [live] = s.server.call("live")["grants"]
    assert (live["address"], live["request"], live["key"]) == (ALICE4, "tcp/22", "alice")
    time.sleep(max(0.0, made + 2.3 - time.monotonic()))
    assert s.probe(s.alice) == "refused"


def test_iptables_ipv6_renewal_and_revoke(iptables_scene: Scene) -> None:
    s = iptables_scene
    grant(s, ALICE6, seconds=2)
    time.sleep(1.2)
    renewed = grant(s, ALICE6, seconds=3)
    time.sleep(max(0.0, renewed + 1.5 - time.monotonic()))
    assert s.probe(s.alice, version=6) == "open"  # 2.7 s after the first grant
    assert s.probe(s.alice, version=4) == "refused"
    s.server.call("revoke", address=ALICE6, request=f"tcp/{SERVICE_PORT}")
    assert s.probe(s.alice, version=6) == "refused"


def test_iptables_reinstall_is_idempotent_and_uninstall_clean(iptables_scene: Scene) -> None:
    s = iptables_scene
    s.server.call("install")  # a restart: stale jump must not double up
    rules = s.world.server.run(["iptables", "-S", "INPUT"]).stdout
    assert rules.count("-j spa_guard") == 1
    s.server.call("uninstall")
    assert "spa_guard" not in s.world.server.run(["iptables", "-S"]).stdout
    assert s.world.server.run(["ipset", "list", "-n"]).stdout.strip() == ""
    assert s.probe(s.alice) == "open"


def test_iptables_refuses_single_use(world: World) -> None:
    need_netns("iptables", "ip6tables", "ipset")
    s = make_scene(world, {"backend": "iptables", "protect": PROTECT})
    with pytest.raises(AgentError, match="single-use"):
        grant(s, single_use=True)
    # firewall.single_use with iptables is refused with the settings themselves (so spa check says it).
    with pytest.raises(AgentError, match="single-use"):
        s.server.call("backend", settings={"backend": "iptables", "protect": PROTECT,
                                           "single_use": [f"tcp/{SERVICE_PORT}"]})


# The command backend's guard is the host's job: here a non-owned nft table
# with a set, and templates that add an element with a kernel timeout (so a
# killed spa still closes) and delete it at stop.
HOST_GUARD = """
table inet host_knock {
  set allowed { type ipv4_addr . inet_proto . inet_service; flags timeout; }
  chain input {
    type filter hook input priority 0; policy accept;
    tcp dport != { 22, 2222 } accept
    ct state established,related accept
    ip saddr . meta l4proto . th dport @allowed accept
    drop
  }
}
"""
ELEMENT = ["{", "%IP%", ".", "%PROTO%", ".", "%PORT%"]
START = ["nft", "add", "element", "inet", "host_knock", "allowed", *ELEMENT, "timeout", "30s", "}"]
STOP = ["nft", "delete", "element", "inet", "host_knock", "allowed", *ELEMENT, "}"]


def test_command_backend_round_trip(world: World, tmp_path: Path) -> None:
    need_netns("nft")
    script = tmp_path / "host.nft"
    script.write_text(HOST_GUARD)
    world.server.run(["nft", "-f", str(script)])
    s = make_scene(world, {"backend": "command", "protect": PROTECT,
                           "start_command": START, "stop_command": STOP})
    assert s.probe(s.alice) == "dropped"
    made = grant(s, seconds=2)
    assert s.probe(s.alice) == "open"
    assert s.probe(s.bob) == "dropped"
    assert s.probe(s.alice, OTHER_PORT) == "dropped"
    assert [g["address"] for g in s.server.call("live")["grants"]] == [ALICE4]
    # The element's own timeout is 30 s: only the stop command closes it at 2 s.
    time.sleep(max(0.0, made + 2.5 - time.monotonic()))
    assert s.probe(s.alice) == "dropped"
    assert s.server.call("live")["grants"] == []
