"""The supervisor survives its worker and its config file (issue 13, HIGH 2 and MEDIUM 7).

Whatever the worker writes down the pipe is either a message or dropped; a
bug one message or one grant hits costs only that one (counted, logged once);
a reload that fails for any reason keeps the running configuration.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spa import config as config_module
from spa.cli import main
from spa.core.events import Carrier, Grant, Request
from spa.daemon import messages, statedir
from spa.daemon.contain import COUNTER
from spa.daemon.statedir import STATUS
from spa.daemon.supervisor import Supervisor, _Child
from spa.firewall import open_backend

SSH = Request("tcp", 22)


@pytest.fixture
def supervisor(tmp_path: Path) -> Supervisor:
    directory = tmp_path / "srv"
    assert main(["init", "--dir", str(directory), "--protect", "tcp/22", "--zone", "knock.test",
                 "--backend", "dry-run"]) == 0
    assert main(["keygen", "alice", "--config", str(directory / "spa.toml"), "--server", "192.0.2.1",
                 "--out", str(tmp_path / "alice.spakey")]) == 0
    made = Supervisor(directory / "spa.toml")  # the dry-run backend: no root, no kernel state
    made.backend = open_backend(made.config.firewall)
    made.child = _Child(os.getpid(), -1, messages.LineReader())  # _write_status names the worker
    made.state = statedir.prepare(made.config.state_dir, None)  # root's part, as _start makes it
    return made


def timed(address: str) -> messages.Timed:
    return messages.Timed(Grant(ipaddress.ip_address(address), SSH, 30, "alice", Carrier.UDP), time.time())


def test_a_grant_the_firewall_chokes_on_costs_only_itself(supervisor: Supervisor, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    backend = supervisor.backend
    assert backend is not None
    real = backend.grant

    def grant(g: Grant) -> None:
        if str(g.address) == "198.51.100.2":
            raise OSError(105, "No buffer space available")  # not a FirewallError: nobody planned for it
        real(g)

    monkeypatch.setattr(backend, "grant", grant)
    for address in ("198.51.100.1", "198.51.100.2", "198.51.100.3"):
        supervisor._handle(timed(address))
    with caplog.at_level(logging.ERROR, logger="spa"):
        supervisor._contained("a message from the worker", lambda: supervisor._handle(messages.Synced()))
    assert sorted(str(g.address) for g in backend.live()) == ["198.51.100.1", "198.51.100.3"]
    assert supervisor.counts[COUNTER] == 1
    assert any("supervisor: unexpected OSError handling a grant" in r.getMessage() for r in caplog.records)
    # The status file counts the supervisor's contained bugs with the worker's.
    supervisor._handle(messages.Stats({COUNTER: 2, "junk": 1}))
    status = json.loads((supervisor.config.state_dir / STATUS).read_text())
    assert status["counts"][COUNTER] == 3


def test_a_reload_that_raises_anything_keeps_the_running_configuration(
        supervisor: Supervisor, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    config, keyring = supervisor.config, supervisor.keyring

    def broken(_: object) -> None:
        raise ZeroDivisionError("a bug in the loader")

    monkeypatch.setattr(config_module, "load_keyring", broken)
    with caplog.at_level(logging.ERROR, logger="spa"):
        assert supervisor.reload() is False
    assert supervisor.config is config and supervisor.keyring is keyring
    assert supervisor.counts[COUNTER] == 1  # not a config error the loader named: a bug, counted
    assert any("reload refused, the running configuration stays: ZeroDivisionError: a bug in the loader"
               in r.getMessage() for r in caplog.records)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_grant_fields = st.fixed_dictionaries({}, optional={
    "address": st.sampled_from(["198.51.100.7", "::1", "fe80::1%eth0", "300.1.1.1", ""]) | _json,
    "request": st.sampled_from(["tcp/22", "udp/0", "tcp/99999", "sctp/1", "tcp/"]) | _json,
    "seconds": st.integers(-5, 100_000) | _json,
    "key": st.sampled_from(["alice", "sequence:", "sequence:office", ""]) | _json,
    "carrier": st.sampled_from([c.value for c in Carrier]) | _json,
    "single_use": st.booleans() | _json,
    "at": st.floats(allow_nan=True, allow_infinity=True) | _json,
})
_lines = st.one_of(
    st.builds(lambda f: {"grant": f}, _grant_fields),
    st.builds(lambda c: {"stats": c}, st.dictionaries(st.text(max_size=30), st.integers() | _json, max_size=8)),
    st.dictionaries(st.text(max_size=8), _json, max_size=3),
    _json,
).map(lambda body: json.dumps(body).encode())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_lines | st.binary(max_size=64), min_size=1, max_size=6))
def test_nothing_the_worker_writes_makes_the_supervisor_raise(supervisor: Supervisor, lines: list[Any]) -> None:
    for line in [*lines, b'{"synced":true}']:
        supervisor._handle(messages.decode(line))  # raises nothing: decoded strictly, checked again
    assert supervisor.counts[COUNTER] == 0


def test_spa_status_shows_the_counter_and_flags_it_above_zero(supervisor: Supervisor) -> None:
    from spa.cli.firewall_cmd import format_counters

    supervisor._handle(messages.Stats({COUNTER: 0, "junk": 1}))
    shown = format_counters(supervisor.config_path)
    assert re.search(rf"^  {re.escape(COUNTER)}\s+0$", shown, re.M) and "were contained" not in shown
    supervisor._handle(messages.Stats({COUNTER: 4}))
    shown = format_counters(supervisor.config_path)
    assert re.search(rf"^  {re.escape(COUNTER)}\s+4$", shown, re.M)
    assert "4 unexpected errors were contained" in shown
