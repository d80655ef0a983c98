"""Guessing one-time codes at a running ``spa serve``: the source is locked out, the key's budget spent.

Small thresholds (3 wrong codes per source, a budget of 5 per key) keep it
short; the gate's rule itself is
tests/unit/test_gate.py::test_wrong_codes_lock_out_the_source_then_spend_the_key_budget.
Here the codes travel as a real resolver would send them (dig, a DNS label)
and as ``ping -p`` patterns, and the proof is in the log and the firewall.
A spent budget outlives the worker, a reload and spa itself (it is kept in
the worker's state directory): before, each of those forgave the guesser.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import time
import tomllib
from pathlib import Path

import pyotp
import pytest
from world import need_netns
from world.daemon import ZONE
from world.knocking import SERVER, Knocking, prepare
from world.netns import wait_until

from spa.client import tokens
from spa.core import otp

pytestmark = pytest.mark.netns

ALICE = ipaddress.ip_address("10.77.1.2")
BOB_SERVER = "10.77.2.1"
PER_SOURCE, PER_KEY = 3, 5


@pytest.fixture
def knocking(request: pytest.FixtureRequest) -> Knocking:
    need_netns("nft", "ping", "dig", libraries=("nftables",))
    k = prepare(request, "--totp")
    k.served.edit("otp_failures_per_source = 5", f"otp_failures_per_source = {PER_SOURCE}")
    k.served.edit("otp_failures_per_key = 20", f"otp_failures_per_key = {PER_KEY}")
    k.served.start()
    return k


def totp(k: Knocking) -> pyotp.TOTP:
    record = tomllib.loads((k.served.directory / "keys" / "alice.toml").read_text())
    return pyotp.TOTP(record["totp_secret"])


def wrong_codes(code: pyotp.TOTP, how_many: int) -> list[str]:
    """Codes the server cannot accept in the next minute or so (not near any current step)."""
    now = time.time()
    near = {code.at(now + 30 * step) for step in range(-2, 4)}
    return [guess for guess in (f"{n:06d}" for n in range(123456, 999999, 111111)) if guess not in near][:how_many]


def dig(k: Knocking, label: str) -> None:
    answer = k.alice_runs("dig", f"@{SERVER}", f"{label}.{ZONE}", "+tries=1", "+time=2")
    assert "status: NOERROR" in answer, answer  # the answer never tells a guess from a good code


def test_guessing_codes_locks_out_the_source_then_spends_the_key_budget(knocking: Knocking) -> None:
    k = knocking
    code = totp(k)
    guesses = wrong_codes(code, PER_KEY + 3)
    source_line = (f"rejected key alice from {ALICE} via dns: wrong one-time code (code does not match; "
                   f"{PER_KEY - PER_SOURCE} of {PER_KEY} wrong codes left for this key")
    for guess in guesses[:PER_SOURCE]:
        dig(k, otp.to_label("alice", guess))
    assert k.served.wait_log(source_line, 5), k.served.log()
    line = next(line for line in k.served.log().splitlines() if source_line in line)
    assert line.endswith("; source locked out for 300 s)"), line

    # The right code from the locked-out source is refused, and says why.
    dig(k, otp.to_label("alice", code.now()))
    refused = f"rejected key alice from {ALICE} via dns: locked out after repeated failures"
    assert k.served.wait_log(refused, 5), k.served.log()
    assert k.probe() == "refused", "a locked-out source opened the port"

    # Another source may still guess, until the key's budget is spent.
    key_line = f"via icmp: wrong one-time code (code does not match; 0 of {PER_KEY} wrong codes left for this key; its codes are refused now"
    bob_pings = 0
    for guess in guesses[PER_SOURCE:]:
        if key_line in k.served.log():
            break
        k.world.bob.run(["ping", "-c", "1", "-W", "1", "-p", otp.to_pattern(k.key.key_id, guess), BOB_SERVER],
                        check=False)
        bob_pings += 1
        # Wait for this ping's own verdict before deciding whether to guess again.
        wait_until(lambda: k.served.log().count("rejected key alice from 10.77.2.2 via icmp") >= bob_pings, 3)
    assert k.served.wait_log(key_line, 3), k.served.log()
    assert bob_pings == PER_KEY - PER_SOURCE, "each wrong ping should count exactly one failure"
    log = k.served.log()
    assert f"rejected key alice from 10.77.2.2 {key_line}" in log, log

    # Now the right code is refused from every source.
    k.world.bob.run(["ping", "-c", "1", "-W", "1", "-p", otp.to_pattern(k.key.key_id, code.now()), BOB_SERVER],
                    check=False)
    assert k.served.wait_log("from 10.77.2.2 via icmp: locked out after repeated failures", 5), k.served.log()
    assert k.probe(k.bob) == "refused", "a locked-out key opened the port"
    assert "accepted" not in k.served.log()

    # Guessing codes cannot lock the owner out of token knocks: those carry a MAC, not a code.
    token = tokens.compact_token(k.key, int(time.time()), ALICE)
    k.alice_runs("ping", "-c", "1", "-W", "1", "-p", tokens.ping_pattern(token), SERVER)
    assert k.opens(timeout=5), k.served.log()
    assert wait_until(lambda: "accepted alice via icmp" in k.served.log(), 3)


def children(pid: int) -> set[int]:
    return {int(n) for n in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def refused_everywhere(k: Knocking, code: pyotp.TOTP, after: str) -> None:
    """The right code, from a source that never guessed, is refused for the key's spent budget."""
    before = k.served.log().count("wrong-code budget is spent")
    k.world.bob.run(["ping", "-c", "1", "-W", "1", "-p", otp.to_pattern(k.key.key_id, code.now()), BOB_SERVER],
                    check=False)
    assert wait_until(lambda: k.served.log().count("wrong-code budget is spent") > before, 5), (after, k.served.log())
    assert k.probe(k.bob) == "refused", f"the right code opened the port after {after}"


def test_a_spent_budget_outlives_the_worker_a_reload_and_a_restart(knocking: Knocking) -> None:
    k = knocking
    code = totp(k)
    for guess in wrong_codes(code, PER_KEY):
        k.world.bob.run(["ping", "-c", "1", "-W", "1", "-p", otp.to_pattern(k.key.key_id, guess), BOB_SERVER],
                        check=False)
        # One spoofed-looking source per guess is what a patient guesser does;
        # here the per-source lockout (3) would stop bob first, so use alice too.
        k.alice_runs("dig", f"@{SERVER}", f"{otp.to_label('alice', guess)}.{ZONE}", "+tries=1", "+time=2")
    assert k.served.wait_log("its codes are refused now", 5), k.served.log()
    refused_everywhere(k, code, "spending the budget")

    supervisor, worker = k.served.process.pid, k.served.worker_pid()  # type: ignore[union-attr]
    os.kill(worker, signal.SIGKILL)  # a crash of the worker (the supervisor starts a new one)
    assert wait_until(lambda: bool(children(supervisor) - {worker}), 5), k.served.log()
    refused_everywhere(k, code, "a worker restart")

    k.served.signal(signal.SIGHUP)
    assert k.served.wait_log("reloaded ", 5), k.served.log()
    refused_everywhere(k, code, "a reload")

    assert k.served.stop() == 0
    k.served.start()
    refused_everywhere(k, code, "a restart of spa")
    assert "accepted" not in k.served.log()


def test_a_reload_hands_no_key_a_fresh_burst_of_grants(request: pytest.FixtureRequest) -> None:
    """Rate limits are saved when a worker stops and read back by the next one."""
    need_netns("nft", "ping", libraries=("nftables",))
    k = prepare(request)
    k.served.edit("key_rate = 0.5 ", "key_rate = 0.01 ")  # one more grant every 100 s
    k.served.config.write_text(k.served.config.read_text().replace("[limits]\n", "[limits]\nkey_burst = 2\n", 1))
    k.served.start()
    now = int(time.time())

    def ping(offset: int) -> None:
        token = tokens.compact_token(k.key, now + offset, ALICE)
        k.alice_runs("ping", "-c", "1", "-W", "1", "-p", tokens.ping_pattern(token), SERVER)

    for offset in (0, 1):
        ping(offset)
    assert wait_until(lambda: k.served.log().count("accepted alice via icmp") == 2, 5), k.served.log()
    k.served.signal(signal.SIGHUP)
    assert k.served.wait_log("reloaded ", 5), k.served.log()
    ping(2)
    assert k.served.wait_log("rate limited (too many grants for this key)", 5), k.served.log()
    assert k.served.log().count("accepted alice via icmp") == 2
