"""Forgery: random, mutated and insider-forged tokens of every format through the real gate.

Usage: python tests/bench/forgery.py [--count 200000] [--seconds 120] [--workers N]
                                     [--formats compact,...] [--seed N] [--json] [--out FILE]

The full run (10 million per format) and its figures: docs/benchmarks.md, "Forgery".

For each token format spa accepts, ``--count`` tokens (half random, half
mutated valid tokens) plus one insider forgery per 20 of them go through
``spa.core.gate.Gate.decide`` (and, for the DNS, ICMP and sequence
formats, through their carrier decoder first), one worker process per
core, each bounded by its share of the count and by ``--seconds``.
Nothing may be accepted: a Duplicate counts as accepted too, since only a
valid token can be one.

- random: bytes (or base32 text, or ports) of the format's sizes.
- mutated: valid tokens with bits flipped, bytes changed, truncated,
  extended, spliced with another valid token, a byte inserted or
  deleted. A mutant equal to a valid token is skipped and counted apart.
- forged: what a client of this server can make for someone else's key.
  It knows the obfuscation key ``O`` (every client does) and, for signed
  datagrams, the wire key derived from it, so it can put the right
  version, key id and time in the plaintext; only the MAC, the AEAD tag or
  the Ed25519 signature is a guess. These reach the expensive check.

Mutants and forgeries come from the valid token's own source at the
token's own time, and the rate limits are set out of reach, so each one is
refused for what it is (the reasons are counted; RATE_LIMITED must be 0).

One-time codes (6 or 8 digits, 1 in 10**6 or 10**8 per guess) cannot show
"none accepted"; what holds them is the wrong-code budget, which
tests/bench/guessing.py plays every guessing strategy against.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import ipaddress
import json
import os
import random
import string
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305  # noqa: E402

from spa.carriers import dns, icmp, udp  # noqa: E402
from spa.carriers.sequence import Tracker  # noqa: E402
from spa.core import compact, datagram, encoding, kdf, otp  # noqa: E402
from spa.core.events import Carrier, Form, IPAddress, Knock, Rejection, Request  # noqa: E402
from spa.core.gate import Gate, GateSettings  # noqa: E402
from spa.core.keyring import Keyring  # noqa: E402
from spa.core.keys import KeyRecord  # noqa: E402
from spa.core.ledger import Ledger  # noqa: E402
from spa.core.policy import Policy  # noqa: E402
from spa.core.sequence import SequenceRule, StaticSequence  # noqa: E402

NOW = 1_760_000_000
SSH = Request("tcp", 22)
RDP = Request("tcp", 3389)
SYMMETRIC_KEYS = 100  # key ids 1..100: secret, TOTP, emergency codes
SIGNED_KEYS = 10  # key ids 101..110: Ed25519 only
CLIENT4 = ipaddress.ip_address("198.51.100.7")
CLIENT6 = ipaddress.ip_address("2001:db8::7")
RESOLVER = ipaddress.ip_address("192.0.2.53")
# Rates far out of reach: every token must be refused for what it is, never for its rate.
UNLIMITED = GateSettings(source_rate=1e9, source_burst=10**12, key_rate=1e9, key_burst=10**12,
                         tracked_sources=1 << 20)
FORMATS = ("compact", "extended4", "extended6", "datagram-aead", "datagram-signed",
           "dns-label", "icmp-ping", "sequence")
BATCH = 2000  # tokens generated, then decided, between two looks at the clock
FORGED_SHARE = 10  # one insider forgery per 2 * FORGED_SHARE random + mutated tokens
BASE32 = string.ascii_lowercase + "234567"
FIXED_PORTS = (Request("tcp", 30001), Request("tcp", 40002), Request("tcp", 50003))


@dataclass(frozen=True)
class World:
    """The server's keys, built identically in every worker from one seed."""

    obfuscation_key: bytes
    secrets: tuple[bytes, ...]  # index i is key id i + 1
    seeds: tuple[bytes, ...]  # Ed25519 seeds, index i is key id 101 + i
    records: tuple[KeyRecord, ...]
    statics: tuple[StaticSequence, ...]

    def keyring(self) -> Keyring:
        return Keyring(self.obfuscation_key, list(self.records), self.statics)

    def gate(self) -> Gate:
        return Gate(self.keyring(), Ledger(660), UNLIMITED)


@functools.lru_cache(maxsize=2)
def build_world(seed: int) -> World:
    rng = random.Random(seed)
    policy = Policy(open=(SSH, RDP), allow_unbound=True, allow_codes=True)
    secrets = tuple(rng.randbytes(32) for _ in range(SYMMETRIC_KEYS))
    seeds = tuple(rng.randbytes(32) for _ in range(SIGNED_KEYS))
    records = [
        KeyRecord(name=f"k{i + 1}", key_id=i + 1, policy=policy, secret=secret,
                  totp_secret=otp.new_secret(), emergency_secret=otp.new_secret(), emergency_count=5)
        for i, secret in enumerate(secrets)
    ]
    for i, signing in enumerate(seeds):
        public = Ed25519PrivateKey.from_private_bytes(signing).public_key().public_bytes_raw()
        records.append(KeyRecord(name=f"s{i + 1}", key_id=101 + i, policy=policy, public_key=public))
    statics = (StaticSequence("fixed", FIXED_PORTS, Policy(open=(SSH,), carriers=frozenset({Carrier.SEQUENCE}))),)
    return World(rng.randbytes(32), secrets, seeds, tuple(records), statics)


# -- valid tokens -------------------------------------------------------------


@dataclass(frozen=True)
class Valid:
    """One valid token and the knock it belongs in: its source and form."""

    payload: bytes
    source: IPAddress
    form: Form


def _pick(rng: random.Random) -> tuple[int, int, int, IPAddress]:
    """A symmetric key index, a token time, a request index and a source."""
    return rng.randrange(SYMMETRIC_KEYS), NOW + rng.randint(-50, 50), rng.randrange(2), rng.choice((CLIENT4, CLIENT6))


def valid_tokens(world: World, fmt: str, rng: random.Random, count: int = 48) -> list[Valid]:
    """``count`` distinct valid tokens of ``fmt`` (the byte formats and what DNS/ICMP carry)."""
    obf = compact.Obfuscator(world.obfuscation_key)
    wire = kdf.derive(world.obfuscation_key, kdf.WIRE)
    out: list[Valid] = []
    for n in range(count):
        index, t, request, source = _pick(rng)
        mac_key = kdf.derive(world.secrets[index], kdf.TOKEN_MAC)
        if fmt in ("compact", "icmp-ping") or (fmt == "dns-label" and n % 3 == 0):
            bound = None if n % 4 == 3 else source
            token = compact.seal_compact(obf, mac_key, index + 1, t, request, bound)
            out.append(Valid(token, source, Form.COMPACT))
        elif fmt in ("extended4", "extended6", "dns-label"):
            family = 4 if fmt == "extended4" or (fmt == "dns-label" and n % 3 == 1) else 6
            address = CLIENT4 if family == 4 else CLIENT6
            out.append(Valid(compact.seal_extended(obf, mac_key, index + 1, t, request, address), RESOLVER,
                             Form.EXTENDED))
        elif fmt in ("datagram-aead", "datagram-signed"):
            mode = (datagram.Mode.SOURCE, datagram.Mode.UNBOUND, datagram.Mode.IPV4, datagram.Mode.IPV6)[n % 4]
            address = {datagram.Mode.IPV4: CLIENT4, datagram.Mode.IPV6: CLIENT6}.get(mode)
            wanted = (SSH, RDP)[: 1 + n % 2]
            body = datagram.Body(mode, wanted, rng.choice((0, 60, 300)), address)
            bound = source if mode == datagram.Mode.SOURCE else None
            if fmt == "datagram-aead":
                payload = datagram.seal(obf, index + 1, t, body, source=bound,
                                        aead_key=kdf.derive(world.secrets[index], kdf.DATAGRAM_AEAD))
            else:
                signer = rng.randrange(SIGNED_KEYS)
                payload = datagram.seal(obf, 101 + signer, t, body, aead_key=wire, source=bound,
                                        signing_key=Ed25519PrivateKey.from_private_bytes(world.seeds[signer]),
                                        server_id=kdf.derive(world.obfuscation_key, kdf.SERVER_ID))
            out.append(Valid(payload, source, Form.DATAGRAM))
        else:
            raise ValueError(f"no byte tokens for {fmt}")
    return out


def check_valid(world: World, tokens: list[Valid]) -> None:
    """Each seed token is accepted by a fresh gate: the mutants are near misses of real tokens."""
    gate = world.gate()  # one gate: the tokens are distinct, so none is a repeat of another
    for token in tokens:
        decision = gate.decide(Knock(Carrier.DNS, token.form, token.payload, token.source, NOW))
        if type(decision) is Rejection:
            raise AssertionError(f"a valid {token.form.value} token was refused: {decision}")


# -- mutation -------------------------------------------------------------------


def mutate(rng: random.Random, valid: bytes, others: list[bytes]) -> bytes:
    """One mutant of ``valid``: most keep the length, so they get past the length checks."""
    data = bytearray(valid)
    roll = rng.random()
    if roll < 0.3:  # flip 1-4 bits
        for _ in range(rng.randint(1, 4)):
            bit = rng.randrange(len(data) * 8)
            data[bit >> 3] ^= 1 << (bit & 7)
    elif roll < 0.6:  # overwrite 1-4 bytes
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif roll < 0.75:  # splice: the head of this token, the tail of another of the same length
        other = rng.choice(others)
        cut = rng.randrange(1, len(data))
        data[cut:] = other[cut : len(data)]
    elif roll < 0.83:  # truncate
        del data[rng.randrange(len(data)) :]
    elif roll < 0.91:  # extend
        data += rng.randbytes(rng.randint(1, 16))
    elif roll < 0.96:  # insert a byte
        data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
    else:  # delete a byte
        del data[rng.randrange(len(data))]
    return bytes(data)


def mutate_label(rng: random.Random, valid: str, others: list[str]) -> str:
    """A text mutant of a base32 label; sometimes in mixed case, as resolvers send (0x20)."""
    chars = list(valid)
    roll = rng.random()
    if roll < 0.5:
        for _ in range(rng.randint(1, 3)):
            chars[rng.randrange(len(chars))] = rng.choice(BASE32)
    elif roll < 0.65:
        other = rng.choice(others)
        cut = rng.randrange(1, len(chars))
        chars[cut:] = other[cut : len(chars)]
    elif roll < 0.75:
        del chars[rng.randrange(1, len(chars)) :]
    elif roll < 0.85:
        chars += rng.choices(BASE32, k=rng.randint(1, 8))
    elif roll < 0.93:
        chars.insert(rng.randrange(len(chars) + 1), rng.choice(BASE32))
    else:
        del chars[rng.randrange(len(chars))]
    label = "".join(chars)
    if rng.random() < 0.3:
        label = "".join(c.upper() if rng.random() < 0.5 else c for c in label)
    return label


# -- insider forgeries -------------------------------------------------------------


def forge_compact(rng: random.Random, obf: compact.Obfuscator, extended: int = 0) -> tuple[bytes, IPAddress]:
    """Right version, key id, time and index under ``O``; the MAC is a guess."""
    index, t, request, source = _pick(rng)
    mode = compact.AddressMode.EXPLICIT if extended else rng.choice((compact.AddressMode.SOURCE,
                                                                   compact.AddressMode.UNBOUND))
    head = bytes([compact.VERSION << 4 | mode, 0, index + 1]) + t.to_bytes(4, "big") + bytes([request])
    token = obf.encrypt_block(head + rng.randbytes(compact.MAC_SIZE))
    if extended:
        address = (CLIENT4 if extended == 4 else CLIENT6).packed
        pad = obf.encrypt_block(token)
        return token + bytes(a ^ b for a, b in zip(address, pad, strict=False)), RESOLVER
    return token, source


def forge_datagram(rng: random.Random, obf: compact.Obfuscator, wire: ChaCha20Poly1305,
                   signed: bool) -> tuple[bytes, IPAddress]:
    """A header right under ``O``; the AEAD (kind 0) or the Ed25519 signature (kind 1) is a guess."""
    _, t, _, source = _pick(rng)
    key_id = 101 + rng.randrange(SIGNED_KEYS) if signed else 1 + rng.randrange(SYMMETRIC_KEYS)
    plain = bytes([datagram.VERSION << 4 | signed, 0, key_id]) + t.to_bytes(4, "big") + rng.randbytes(9)
    sealed = obf.encrypt_block(plain)
    if not signed:
        return sealed + rng.randbytes(rng.randint(7 + datagram.TAG, datagram.MAX_SIZE - datagram.HEADER)), source
    # The wire key is server-wide, so an insider seals a well-formed body with a made-up signature.
    body = datagram.encode_body(datagram.Body(datagram.Mode.SOURCE, (SSH,))) + rng.randbytes(datagram.SIGNATURE)
    aad = datagram.AAD_CONTEXT + sealed + source.packed
    return sealed + wire.encrypt(sealed[:12], body, aad), source


# -- one worker's run of one format ---------------------------------------------------


@dataclass
class Tally:
    """What one worker saw; merged across workers by adding."""

    tried: Counter[str]  # by kind: random, mutated, forged
    outcomes: Counter[str]  # gate reasons, "Accepted", "Duplicate", "carrier: none" (refused before the gate)
    unchanged: int = 0  # mutants equal to a valid token, skipped
    seconds: float = 0.0

    @property
    def guesses(self) -> int:
        """Random and mutated tokens so far: what ``count`` bounds (forgeries come on top)."""
        return self.tried["random"] + self.tried["mutated"]

    def as_dict(self) -> dict[str, Any]:
        return {"tried": dict(self.tried), "outcomes": dict(self.outcomes), "unchanged": self.unchanged,
                "seconds": round(self.seconds, 3)}


def _outcome(decision: object) -> str:
    return decision.reason.name if type(decision) is Rejection else type(decision).__name__  # type: ignore[attr-defined]


def _byte_format(world: World, fmt: str, rng: random.Random) -> Iterator[tuple[str, Knock | None] | None]:
    """Endless (kind, knock) for the byte formats; None for a skipped (unchanged) mutant."""
    obf = compact.Obfuscator(world.obfuscation_key)
    wire = ChaCha20Poly1305(kdf.derive(world.obfuscation_key, kdf.WIRE))
    valid = valid_tokens(world, fmt, rng)
    check_valid(world, valid)
    known = {v.payload for v in valid}
    payloads = [v.payload for v in valid]
    form = valid[0].form
    carrier = Carrier.UDP if form == Form.DATAGRAM else Carrier.DNS
    sizes = {"compact": (16,), "extended4": (20,), "extended6": (32,)}.get(fmt)
    sources = (CLIENT4, CLIENT6, RESOLVER)
    tick = 0
    while True:
        tick += 1
        if tick % (2 * FORGED_SHARE + 1) == 0:
            if form == Form.DATAGRAM:
                payload, source = forge_datagram(rng, obf, wire, fmt == "datagram-signed")
            else:
                payload, source = forge_compact(rng, obf, {"extended4": 4, "extended6": 6}.get(fmt, 0))
            yield "forged", Knock(carrier, form, payload, source, NOW)
        elif tick & 1:
            size = rng.choice(sizes) if sizes else rng.randint(udp.MIN_SIZE, datagram.MAX_SIZE)
            yield "random", Knock(carrier, form, rng.randbytes(size), rng.choice(sources), NOW)
        else:
            seed = rng.choice(valid)
            mutant = mutate(rng, seed.payload, [p for p in payloads if len(p) == len(seed.payload)])
            if mutant in known:
                yield None
                continue
            yield "mutated", Knock(carrier, form, mutant, seed.source, NOW)


def run_bytes(world: World, fmt: str, rng: random.Random, count: int, deadline: float) -> Tally:
    gate = world.gate()
    decide = gate.decide
    tally = Tally(Counter(), Counter())
    tokens = _byte_format(world, fmt, rng)
    while tally.guesses < count and time.monotonic() < deadline:
        batch = []
        while len(batch) < BATCH:
            item = next(tokens)
            if item is None:
                tally.unchanged += 1
            else:
                batch.append(item)
        for kind, knock in batch:
            tally.tried[kind] += 1
            tally.outcomes[_outcome(decide(knock))] += 1  # type: ignore[arg-type]
    return tally


def run_dns(world: World, rng: random.Random, count: int, deadline: float) -> Tally:
    """Labels through ``dns.knock`` (the classifier the daemon uses), then the gate."""
    obf = compact.Obfuscator(world.obfuscation_key)
    gate = world.gate()
    valid = valid_tokens(world, "dns-label", rng)
    check_valid(world, valid)
    labels = [encoding.to_label(v.payload) for v in valid]
    by_label = {label: v.source for label, v in zip(labels, valid, strict=False)}
    tally = Tally(Counter(), Counter())
    tick = 0
    while tally.guesses < count and time.monotonic() < deadline:
        for _ in range(BATCH):
            tick += 1
            if tick % (2 * FORGED_SHARE + 1) == 0:
                payload, source = forge_compact(rng, obf, rng.choice((0, 4, 6)))
                kind, label = "forged", encoding.to_label(payload)
            elif tick & 1:
                kind, source = "random", RESOLVER
                label = "".join(rng.choices(BASE32, k=rng.choice((26, 32, 52))))
            else:
                seed = rng.randrange(len(labels))
                label = mutate_label(rng, labels[seed], [x for x in labels if len(x) == len(labels[seed])])
                if label.lower() in by_label:
                    tally.unchanged += 1
                    continue
                kind, source = "mutated", by_label[labels[seed]]
            tally.tried[kind] += 1
            knock = dns.knock(label, source, NOW)
            tally.outcomes["carrier: none" if knock is None else _outcome(gate.decide(knock))] += 1
    return tally


def ping_data(pattern: bytes, layout: int, size: int = 56) -> bytes:
    """Echo data as ``ping -p`` writes it: Linux (layout 0), BSD (1); docs/carriers.md."""
    stamp = (NOW).to_bytes(8, "little") + (123456).to_bytes(8, "little")
    if layout == 0:
        return stamp + bytes(pattern[k % len(pattern)] for k in range(16, size))
    return stamp[:8] + bytes(pattern[(k - 8) % len(pattern)] for k in range(8, size))


def run_icmp(world: World, rng: random.Random, count: int, deadline: float) -> Tally:
    """Echo data through ``icmp.knocks``; every candidate goes to the gate, as the daemon does."""
    obf = compact.Obfuscator(world.obfuscation_key)
    gate = world.gate()
    valid = valid_tokens(world, "icmp-ping", rng)
    check_valid(world, valid)
    known = {v.payload for v in valid}
    payloads = [v.payload for v in valid]
    tally = Tally(Counter(), Counter())
    tick = 0
    while tally.guesses < count and time.monotonic() < deadline:
        for _ in range(BATCH):
            tick += 1
            if tick % (2 * FORGED_SHARE + 1) == 0:
                token, source = forge_compact(rng, obf)
                kind, data = "forged", ping_data(token, rng.randrange(2))
            elif tick & 1:
                kind, source, data = "random", CLIENT4, rng.randbytes(rng.randint(0, 200))
            else:
                seed = rng.choice(valid)
                token = mutate(rng, seed.payload, payloads)[:16]
                if token in known or not token:
                    tally.unchanged += 1
                    continue
                kind, source, data = "mutated", seed.source, ping_data(token, rng.randrange(2), rng.choice((32, 56, 64)))
            tally.tried[kind] += 1
            # Every candidate is decided, as the daemon does; the tally keeps the
            # furthest any of them got (a wrong phase is MALFORMED whatever the token).
            outcome = "carrier: none"
            for candidate in icmp.knocks(data, source, NOW):
                found = _outcome(gate.decide(candidate))
                if outcome in ("carrier: none", "MALFORMED") or found in ("Accepted", "Duplicate"):
                    outcome = found
                if found in ("Accepted", "Duplicate"):
                    break
            tally.outcomes[outcome] += 1
    return tally


def run_sequence(world: World, rng: random.Random, count: int, deadline: float) -> Tally:
    """Ports through the sequence Tracker (one-time and fixed sequences), then the gate.

    A random guess is one port: after it, the source's last three ports are
    a whole sequence to check. Mutants each come from a fresh source, so no
    tail can mix two of them.
    """
    gate = world.gate()
    rule = SequenceRule()
    table = gate.sequences(NOW)
    tracker = Tracker(world.statics, max_sources=4096)
    tracker.set_otp(table)
    valid = list(table) + [tuple(step.port for step in FIXED_PORTS)]
    forbidden = set(valid)
    tally = Tally(Counter(), Counter())
    tcp = [Request("tcp", port) for port in range(rule.low, rule.high + 1)]
    guessers = [ipaddress.IPv4Address(0x0A000000 + n) for n in range(256)]
    fresh = 0
    while tally.guesses < count and time.monotonic() < deadline:
        for _ in range(BATCH // 2):
            tally.tried["random"] += 1
            knocks = tracker.hit(rng.choice(guessers), rng.choice(tcp), NOW)
            tally.outcomes[_outcome(gate.decide(knocks[0])) if knocks else "carrier: none"] += 1
            mutant = _mutate_ports(rng, list(rng.choice(valid)), rule)
            if any(tuple(mutant[i : i + 3]) in forbidden for i in range(len(mutant) - 2)):
                tally.unchanged += 1
                continue
            fresh += 1
            source = ipaddress.IPv4Address(0x0B000000 + fresh % 65536)
            tally.tried["mutated"] += 1
            outcome = "carrier: none"
            for port in mutant:
                for knock in tracker.hit(source, Request("tcp", port), NOW):
                    outcome = _outcome(gate.decide(knock))
            tally.outcomes[outcome] += 1
    return tally


def _mutate_ports(rng: random.Random, seq: list[int], rule: SequenceRule) -> list[int]:
    roll = rng.random()
    at = rng.randrange(len(seq))
    if roll < 0.35:
        seq[at] = rng.randint(rule.low, rule.high)
    elif roll < 0.55:
        seq[at] = min(rule.high, max(rule.low, seq[at] + rng.choice((-2, -1, 1, 2))))
    elif roll < 0.7:
        other = rng.randrange(len(seq))
        seq[at], seq[other] = seq[other], seq[at]
    elif roll < 0.8:
        del seq[at]
    elif roll < 0.9:
        seq.insert(at, rng.randint(rule.low, rule.high))
    else:
        seq.reverse()
    # Repeats in a row are one retransmitted SYN to the tracker: judge what it will see.
    return [port for i, port in enumerate(seq) if i == 0 or port != seq[i - 1]]


def run_share(fmt: str, count: int, seconds: float, seed: int, world_seed: int) -> Tally:
    """One worker's share of one format: ``count`` tokens or ``seconds``, whichever ends first."""
    world = build_world(world_seed)
    rng = random.Random(seed)
    start = time.monotonic()
    deadline = start + seconds
    if fmt == "dns-label":
        tally = run_dns(world, rng, count, deadline)
    elif fmt == "icmp-ping":
        tally = run_icmp(world, rng, count, deadline)
    elif fmt == "sequence":
        tally = run_sequence(world, rng, count, deadline)
    else:
        tally = run_bytes(world, fmt, rng, count, deadline)
    tally.seconds = time.monotonic() - start
    return tally


# -- driver ---------------------------------------------------------------------------------


def measure(count: int, seconds: float, workers: int, formats: tuple[str, ...] = FORMATS,
            seed: int | None = None) -> dict[str, Any]:
    """Run every format across ``workers`` processes; figures and counts per format.

    ``count`` random + mutated tokens per format (insider forgeries on top),
    or ``seconds`` per format, whichever ends first.
    """
    seed = seed if seed is not None else int.from_bytes(os.urandom(4), "big")
    world_seed = seed ^ 0x5EED
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": sys.version.split()[0], "workers": workers, "count_per_format": count,
        "seconds_per_format": seconds, "seed": seed, "formats": {},
    }
    shares = [count // workers + (1 if i < count % workers else 0) for i in range(workers)]
    with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
        for fmt in formats:
            start = time.monotonic()
            futures = [pool.submit(run_share, fmt, share, seconds, seed + 7919 * i + 104729 * FORMATS.index(fmt), world_seed)
                       for i, share in enumerate(shares)]
            merged = Tally(Counter(), Counter())
            for future in futures:
                part = future.result()
                merged.tried.update(part.tried)
                merged.outcomes.update(part.outcomes)
                merged.unchanged += part.unchanged
            wall = time.monotonic() - start
            tried = sum(merged.tried.values())
            accepted = merged.outcomes["Accepted"] + merged.outcomes["Duplicate"]
            results["formats"][fmt] = {
                **merged.as_dict(), "total": tried, "random_and_mutated": merged.guesses, "accepted": accepted,
                "wall_seconds": round(wall, 2), "per_s": round(tried / wall),
            }
    return results


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """The flat figures people read: per format, tokens, accepted and rate."""
    flat: dict[str, Any] = {}
    for fmt, figures in results["formats"].items():
        flat[f"{fmt}_tokens"] = figures["total"]
        flat[f"{fmt}_accepted"] = figures["accepted"]
        flat[f"{fmt}_per_s"] = figures["per_s"]
    return flat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200_000, help="random + mutated tokens per format")
    parser.add_argument("--seconds", type=float, default=120.0, help="time limit per format")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--seed", type=int)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", type=Path, help="also write the full results as JSON here")
    args = parser.parse_args()
    formats = tuple(args.formats.split(","))
    unknown = set(formats) - set(FORMATS)
    if unknown:
        parser.error(f"unknown formats {sorted(unknown)}; known: {', '.join(FORMATS)}")
    results = measure(args.count, args.seconds, args.workers, formats, args.seed)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        from figures import print_results

        print_results(summary(results), False)
    accepted = {fmt: f["accepted"] for fmt, f in results["formats"].items() if f["accepted"]}
    if accepted:
        sys.exit(f"FORGERY ACCEPTED: {accepted}")


if __name__ == "__main__":
    main()
