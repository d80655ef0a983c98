"""Gate decisions per second on one core: junk, valid, and valid with an fsynced ledger.

Usage: python tests/bench/gate.py [--seconds 2] [--json]

Each measurement runs a fixed list of knocks through Gate.decide for about
``--seconds`` and reports decisions per second. Junk is random bytes of
the right length for each form (the hardest junk: it cannot be refused by
length). Valid knocks are distinct tokens, each from its own source, so
rate limits and the replay ledger do their real work.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from figures import print_results  # noqa: E402 - a sibling module; the script's directory is on sys.path

from spa.core import compact, datagram, kdf  # noqa: E402
from spa.core.events import Carrier, Form, Knock, Request  # noqa: E402
from spa.core.gate import Gate, GateSettings  # noqa: E402
from spa.core.keyring import Keyring  # noqa: E402
from spa.core.keys import KeyRecord  # noqa: E402
from spa.core.ledger import FileLedger, Ledger  # noqa: E402
from spa.core.policy import Policy  # noqa: E402

NOW = 1_760_000_000
OBFUSCATION = os.urandom(32)
SETTINGS = GateSettings(source_rate=1e6, source_burst=10**6, key_rate=1e6, key_burst=10**6, tracked_sources=10**6)


def make_keyring(keys: int = 100) -> tuple[Keyring, list[bytes]]:
    secrets = [os.urandom(32) for _ in range(keys)]
    records = [
        KeyRecord(name=f"k{i}", key_id=i + 1, policy=Policy(open=(Request("tcp", 22),)), secret=secret)
        for i, secret in enumerate(secrets)
    ]
    return Keyring(OBFUSCATION, records), secrets


def source(n: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(0x0A000000 + n)


def rate(gate: Gate, knocks: list[Knock], seconds: float) -> float:
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    decide = gate.decide
    while time.perf_counter() < deadline:
        for knock in knocks:
            decide(knock)
        done += len(knocks)
    return done / (time.perf_counter() - start)


def valid_knocks(keyring: Keyring, secrets: list[bytes], form: Form, count: int) -> list[Knock]:
    knocks = []
    for n in range(count):
        index = n % len(secrets)
        address = source(n)
        mac_key = kdf.derive(secrets[index], kdf.TOKEN_MAC)
        t = NOW - (n % 50)
        if form == Form.COMPACT:
            payload = compact.seal_compact(keyring.obfuscator, mac_key, index + 1, t, 0, address)
        elif form == Form.EXTENDED:
            payload = compact.seal_extended(keyring.obfuscator, mac_key, index + 1, t, 0, address)
        else:
            body = datagram.Body(datagram.Mode.SOURCE, (Request("tcp", 22),))
            payload = datagram.seal(keyring.obfuscator, index + 1, t, body,
                                    aead_key=kdf.derive(secrets[index], kdf.DATAGRAM_AEAD), source=address)
        knocks.append(Knock(Carrier.UDP, form, payload, address, NOW))
    return knocks


def measure(seconds: float) -> dict[str, Any]:
    keyring, secrets = make_keyring()
    results: dict[str, Any] = {"keys": len(keyring), "python": sys.version.split()[0]}
    sizes = {Form.COMPACT: 16, Form.EXTENDED: 20, Form.DATAGRAM: 64}
    for form, size in sizes.items():
        junk = [Knock(Carrier.UDP, form, os.urandom(size), source(n), NOW) for n in range(20000)]
        gate = Gate(keyring, Ledger(660), SETTINGS)
        results[f"junk_{form.value}_per_s"] = round(rate(gate, junk, seconds))
        assert not gate.counts["Accepted"], "junk was accepted"
    for form in sizes:
        knocks = valid_knocks(keyring, secrets, form, 20000)
        # Each valid knock is accepted once; count fresh gates so every decision verifies a MAC.
        start = time.perf_counter()
        decided = 0
        while time.perf_counter() - start < seconds:
            gate = Gate(keyring, Ledger(660), SETTINGS)
            for knock in knocks:
                gate.decide(knock)
            assert gate.counts["Accepted"] == len(knocks), gate.counts
            decided += len(knocks)
        results[f"valid_{form.value}_per_s"] = round(decided / (time.perf_counter() - start))
    with tempfile.TemporaryDirectory() as state:
        knocks = valid_knocks(keyring, secrets, Form.COMPACT, 300)
        gate = Gate(keyring, FileLedger(Path(state) / "ledger", 660), SETTINGS)
        start = time.perf_counter()
        for knock in knocks:
            gate.decide(knock)
        results["valid_compact_fsynced_per_s"] = round(len(knocks) / (time.perf_counter() - start))
        assert gate.counts["Accepted"] == len(knocks)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = measure(args.seconds)
    print_results(results, args.json)


if __name__ == "__main__":
    main()
