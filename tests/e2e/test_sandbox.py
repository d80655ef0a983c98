"""A compromised worker keeps no raw packet power (issue 13, finding 8).

The kernel checks CAP_NET_RAW only when a packet socket is made, so a worker
that merely dropped root could still, on the capture sockets it inherited,
detach spa's filter, capture outgoing traffic, go promiscuous, rebind to any
interface and send frames with any source address. These tests run the real
``spa serve`` through tests/world/worker_attacks.py, which makes each of
those attempts from inside the real worker, after ``_worker_main`` dropped
root and entered its sandbox, just before the event loop starts. Each must
be refused with EPERM; the worker must still read its capture and answer
DNS, and the same daemon must still grant a knock afterwards.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import time
from pathlib import Path

import pytest
from world import need_netns
from world.knocking import Knocking, prepare
from world.worker_attacks import MARK

from spa.client import tokens
from spa.daemon import privdrop
from spa.demo import served as served_module

pytestmark = pytest.mark.netns

ALICE = ipaddress.ip_address("10.77.1.2")
ATTACKS = Path(__file__).resolve().parents[1] / "world" / "worker_attacks.py"
MAY = {"may read capture": {"ok", "EAGAIN"}, "may read statistics": {"ok"}, "may answer dns": {"ok"}}
NOBODY = 65534
# spa started not as root but as nobody with the capabilities it needs, as a
# unit with User= and AmbientCapabilities= would: drop() has no root to drop there.
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
             "--inh-caps=+net_admin,+net_raw,+net_bind_service",
             "--ambient-caps=+net_admin,+net_raw,+net_bind_service", "--"]


@pytest.fixture(params=["root", "nobody with capabilities"])
def attacked(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Knocking:
    """spa serve (every carrier, DNS served) whose worker made its attempts at start."""
    need_netns("nft", "setpriv", libraries=("nftables",))
    knocking = prepare(request)
    prefix: list[str] = []
    if request.param != "root":
        prefix = AS_NOBODY
        # The config, secret and keys stay root's, readable by nobody's group:
        # the worker is nobody here too, and must not be able to change them.
        state = knocking.served.directory / "state"
        for path in [knocking.served.directory, *knocking.served.directory.rglob("*")]:
            if path == state or state in path.parents:
                os.chown(path, NOBODY, NOBODY)
            elif path.suffix != ".spakey":  # the client's key file is the test's, not the server's
                os.chown(path, 0, NOBODY)
                os.chmod(path, 0o750 if path.is_dir() else 0o640)
    monkeypatch.setattr(served_module, "SPA", [*prefix, sys.executable, str(ATTACKS)])
    knocking.served.start()
    return knocking


def _outcomes(k: Knocking) -> dict[str, str]:
    k.served.wait_log(MARK)  # the worker reports after the supervisor's banner
    log = k.served.log()
    lines = [line for line in log.splitlines() if line.startswith(MARK)]
    assert lines, f"the worker made no attempts:\n{log}"
    return json.loads(lines[-1][len(MARK):])


def test_the_dropped_worker_cannot_sniff_or_spoof(attacked: Knocking) -> None:
    outcomes = _outcomes(attacked)  # first: the worker has dropped root and entered its sandbox by then
    capabilities = privdrop.capabilities(attacked.served.worker_pid())
    assert capabilities == dict.fromkeys(capabilities, 0), capabilities
    seen = outcomes.pop("see other processes")
    # Its own user cannot change what root trusts (found by an outside review when spa ran as nobody).
    changes = {name: outcomes.pop(name) for name in ("change the config", "change the server secret", "add a key")}
    assert changes == dict.fromkeys(changes, "EACCES"), changes
    refusals = {name: got for name, got in outcomes.items() if name not in MAY}
    assert len(refusals) >= 16, outcomes
    allowed = {name: got for name, got in refusals.items() if got != "EPERM"}
    assert not allowed, f"the worker could still: {allowed}"
    # Started as root, the worker has no /proc: it cannot open another process's memory
    # (found by an outside review, from the worker into another process of its user).
    # Started as nobody there is no root to make a mount namespace with: it still sees them.
    assert attacked.served.process is not None
    started_as_root = os.stat(f"/proc/{attacked.served.process.pid}").st_uid == 0
    assert seen == ("ENOENT" if started_as_root else "ok"), seen


def test_the_sandboxed_worker_still_reads_answers_and_grants(attacked: Knocking) -> None:
    k = attacked
    outcomes = _outcomes(k)
    for name, fine in MAY.items():
        assert outcomes.get(name) in fine, (name, outcomes)
    k.closed_before()
    packet = tokens.spa_datagram(k.key, int(time.time()), source=ALICE)
    k.alice_sends(packet)
    assert k.opens(), k.served.log()
    k.only_alice()
    assert "worker exited" not in k.served.log()

