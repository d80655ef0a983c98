"""Values the loaders used to accept and the running server then choked on (issue 13, MEDIUM 7).

A real ``spa serve`` in the namespace world; the key store or spa.toml is
edited under it and SIGHUP sent, as an operator would. Before the fix an
80-bit ``totp_secret`` reloaded fine and then every code for that key raised
out of the gate (anyone who knew the name could kill the worker); an 80-bit
``emergency_secret`` raised ValueError out of the reload and ended the
supervisor with every grant; a DNS ttl of 6 passed ``spa check`` and the
worker then crash-looped until the supervisor gave up.
"""

from __future__ import annotations

import base64
import re
import signal
import time
import tomllib

import pyotp
import pytest
from world import need_netns
from world.daemon import ZONE, alive
from world.knocking import SERVER, Knocking, prepare
from world.netns import wait_until

from spa.core import otp

pytestmark = pytest.mark.netns

SHORT = base64.b32encode(b"\x5a" * 10).decode()  # 80 bits: what the loader used to allow


@pytest.fixture
def knocking(request: pytest.FixtureRequest) -> Knocking:
    """alice with a TOTP secret and two emergency codes; serving."""
    need_netns("nft", "dig", libraries=("nftables",))
    k = prepare(request, "--totp", "--emergency", "2")
    k.served.start()
    return k




def reload_refused(k: Knocking) -> str:
    """SIGHUP; the refusal line it led to (fails if the reload went through instead)."""
    before = k.served.log().count("reload refused")
    k.served.signal(signal.SIGHUP)
    assert wait_until(lambda: k.served.log().count("reload refused") > before or "reloaded" in k.served.log()
                      or k.served.process.poll() is not None, 10), k.served.log()  # type: ignore[union-attr]
    assert k.served.process.poll() is None, "the supervisor died of the reload:\n" + k.served.log()  # type: ignore[union-attr]
    assert "reloaded" not in k.served.log(), "the reload went through:\n" + k.served.log()
    return [line for line in k.served.log().splitlines() if "reload refused" in line][-1]


def dig(k: Knocking, label: str) -> str:
    result = k.world.alice.run(["dig", f"@{SERVER}", f"{label}.{ZONE}", "+tries=1", "+time=3"], check=False)
    return result.stdout


@pytest.mark.parametrize("option", ["totp_secret", "emergency_secret"])
def test_a_short_otp_secret_is_refused_at_reload_and_the_old_keys_keep_working(knocking: Knocking, option: str) -> None:
    k = knocking
    supervisor, worker = k.served.process.pid, k.served.worker_pid()  # type: ignore[union-attr]
    path = k.served.directory / "keys" / "alice.toml"
    secret = tomllib.loads(path.read_text())["totp_secret"]
    text = path.read_text()
    good = tomllib.loads(text)[option]
    path.write_text(text.replace(f'{option} = "{good}"', f'{option} = "{SHORT}"'))

    why = reload_refused(k)
    assert str(path) in why and option in why and "112 bits" in why, why
    assert re.search(rf"{re.escape(str(path))}:\d+: {option}: ", why), why  # file, line and option

    # Codes for alice, wrong and right, while her file holds the short secret: nothing crashes,
    # and the running configuration (the old secret) still decides.
    assert "NOERROR" in dig(k, otp.to_label("alice", "123456"))
    assert "NOERROR" in dig(k, otp.to_label("alice", "1234567890"))
    assert "NOERROR" in dig(k, otp.to_label("alice", pyotp.TOTP(secret).now()))
    assert k.opens(timeout=5), k.served.log()
    assert k.served.wait_log("accepted alice via dns", 3), k.served.log()

    time.sleep(0.5)  # a worker that died of the knock would be noticed by now
    assert alive(supervisor) and alive(worker), k.served.log()
    assert not re.search(r"worker (exited|failed)|Traceback", k.served.log()), k.served.log()
    assert k.served.stop() == 0


def test_a_dns_ttl_the_zone_cannot_serve_fails_check_and_reload_not_the_worker(knocking: Knocking) -> None:
    k = knocking
    worker = k.served.worker_pid()
    k.served.edit("ttl = 1 ", "ttl = 6 ")
    check = k.served.spa("check", "--config", str(k.served.config), check=False)
    assert check.returncode != 0 and "carriers.dns.ttl" in check.stderr, check.stdout + check.stderr
    why = reload_refused(k)
    assert "carriers.dns.ttl" in why and str(k.served.config) in why, why
    assert "NOERROR" in dig(k, "www")
    time.sleep(0.5)
    assert alive(worker) and "worker exited" not in k.served.log(), k.served.log()
    assert k.served.stop() == 0
