"""Writes the seed corpus of every fuzz target into tests/fuzz/corpus/<target>/.

Usage: python tests/fuzz/make_corpus.py

Seeds are small and made from the test-vector keys (harness.py), so they
hold knocks the gate accepts: the fuzzer starts from the paths real knocks
take. Deterministic: running it again rewrites the same files. Inputs a
fuzzer found that crashed spa are kept beside these, named ``crash-*``,
and this script leaves them alone.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pyotp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dnslib import EDNS0, DNSRecord

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

from spa.core import compact, datagram, encoding, kdf, otp, sequence  # noqa: E402
from spa.core.events import Request  # noqa: E402

CORPUS = Path(__file__).resolve().parent / "corpus"
SSH, RDP = Request("tcp", 22), Request("tcp", 3389)


def _tokens() -> dict[str, bytes]:
    obf = compact.Obfuscator(harness.OBFUSCATION_KEY)
    mac = kdf.derive(harness.SECRET, kdf.TOKEN_MAC)
    return {
        "compact": compact.seal_compact(obf, mac, 7, harness.NOW, 0, harness.CLIENT),
        "compact6": compact.seal_compact(obf, mac, 7, harness.NOW, 1, harness.CLIENT6),
        "unbound": compact.seal_compact(obf, mac, 7, harness.NOW, 0, None),
        "extended4": compact.seal_extended(obf, mac, 7, harness.NOW, 0, harness.CLIENT),
        "extended6": compact.seal_extended(obf, mac, 7, harness.NOW, 1, harness.CLIENT6),
    }


def _totp() -> str:
    return pyotp.TOTP(harness.TOTP_SECRET).at(harness.NOW)


def dns_seeds() -> dict[str, bytes]:
    def query(name: str, qtype: str = "A", edns: bool = False) -> bytes:
        record = DNSRecord.question(name, qtype)
        record.header.id = 0x1234
        if edns:
            record.add_ar(EDNS0(udp_len=1232))
        return bytes(record.pack())

    zone = harness.ZONE
    # The DNS target knocks from harness.CLIENT (IPv4): the token bound to CLIENT6 is for ping6 only.
    seeds = {f"{name}-label": query(f"{encoding.to_label(token)}.{zone}")
             for name, token in _tokens().items() if name != "compact6"}
    seeds["compact-label-0x20"] = query(f"{encoding.to_label(_tokens()['compact']).upper()}.{zone}", edns=True)
    seeds["totp-label"] = query(f"{otp.to_label('alice', _totp())}.{zone}")
    seeds["totp-label-address"] = query(f"{otp.to_label('alice', _totp(), harness.CLIENT6)}.{zone}", "AAAA")
    seeds["emergency-label"] = query(f"{otp.to_label('alice', otp.emergency_codes(harness.EMERGENCY_SECRET, 1)[0])}.{zone}")
    seeds["apex-soa"] = query(zone, "SOA", edns=True)
    seeds["apex-ns"] = query(zone, "NS")
    seeds["apex-any"] = query(zone, "ANY")
    seeds["nameserver-a"] = query(f"ns1.{zone}", "A")
    seeds["axfr"] = query(zone, "AXFR")
    seeds["outside"] = query("example.org", "A")
    seeds["deep"] = query(f"a.b.{zone}", "TXT")
    return seeds


def _ping(pattern: bytes, layout: str, size: int = 56) -> bytes:
    # As docs/carriers.md has it: Linux data[k] = pat[k mod len] after a 16-byte
    # timestamp; BSD data[k] = pat[(k - 8) mod len] after an 8-byte one.
    if layout == "linux":
        return struct.pack("<qq", harness.NOW, 123456) + bytes(pattern[k % len(pattern)] for k in range(16, size))
    return struct.pack(">II", harness.NOW, 5) + bytes(pattern[(k - 8) % len(pattern)] for k in range(8, size))


def icmp_seeds() -> dict[str, bytes]:
    tokens = _tokens()
    totp_pattern = bytes.fromhex(otp.to_pattern(7, _totp()))
    emergency = bytes.fromhex(otp.to_pattern(7, otp.emergency_codes(harness.EMERGENCY_SECRET, 1)[0]))
    return {
        "ping-linux": b"\x01" + _ping(tokens["compact"], "linux"),
        "ping-bsd": b"\x03" + _ping(tokens["unbound"], "bsd", 64),
        "ping6-linux": b"\x02" + _ping(tokens["compact6"], "linux", 32),
        "ping-totp": b"\x01" + _ping(totp_pattern, "linux"),
        "ping-emergency-bsd": b"\x01" + _ping(emergency, "bsd"),
        "ping-short": b"\x01" + bytes(20),
        "packet-echo4": b"\x00" + harness.echo(_ping(tokens["compact"], "linux"), 4),
        "packet-echo6": b"\x00" + harness.echo(_ping(tokens["compact6"], "linux"), 6),
        "packet-udp": b"\x00" + harness.udp(53, b"hello"),
        "packet-syn": b"\x00" + harness.syn(7000),
    }


def udp_seeds() -> dict[str, bytes]:
    obf = compact.Obfuscator(harness.OBFUSCATION_KEY)
    aead = kdf.derive(harness.SECRET, kdf.DATAGRAM_AEAD)
    wire = kdf.derive(harness.OBFUSCATION_KEY, kdf.WIRE)
    bob = Ed25519PrivateKey.from_private_bytes(harness.SIGNING_SEED)
    bodies = {
        "source": datagram.Body(datagram.Mode.SOURCE, (SSH,)),
        "unbound": datagram.Body(datagram.Mode.UNBOUND, (SSH, RDP), 120),
        "ipv4": datagram.Body(datagram.Mode.IPV4, (RDP,), 60, harness.CLIENT),
        "ipv6": datagram.Body(datagram.Mode.IPV6, (SSH, RDP), 0, harness.CLIENT6),
    }
    seeds: dict[str, bytes] = {}
    for name, body in bodies.items():
        bound = harness.CLIENT if body.mode == datagram.Mode.SOURCE else None
        seeds[f"datagram-{name}"] = b"\x00" + datagram.seal(obf, 7, harness.NOW, body, aead_key=aead, source=bound,
                                                            random=bytes(9))
        seeds[f"signed-{name}"] = b"\x00" + datagram.seal(obf, 8, harness.NOW, body, aead_key=wire, source=bound,
                                                          signing_key=bob, server_id=kdf.derive(harness.OBFUSCATION_KEY, kdf.SERVER_ID),
                                                          random=bytes(9))
        # Mode bytes 1 and 2 (0x81/0x82 with the source bound): the body alone, sealed by the harness.
        flag = 0x80 if bound else 0
        seeds[f"body-{name}"] = bytes([1 | flag]) + datagram.encode_body(body)
        seeds[f"signed-body-{name}"] = bytes([2 | flag]) + datagram.encode_body(body) + bytes(datagram.SIGNATURE)
    return seeds


def sequence_seeds() -> dict[str, bytes]:
    rule = harness.CONFIG.gate.sequence
    key = kdf.derive(harness.SECRET, kdf.SEQUENCE)
    step = rule.step_at(harness.NOW)

    def records(ports: list[tuple[str, int]], who: int = 0) -> bytes:
        # See harness.play_sequence; a step byte of 136 moves the clock half a second on.
        return b"".join(bytes([(0x80 if proto == "udp" else 0) | who, port >> 8, port & 0xFF, 136])
                        for proto, port in ports)

    one_time = [("tcp", p) for p in sequence.ports(key, step, 0, rule)]
    second = [("udp", p) for p in sequence.ports(key, step, 1, rule)]
    door = [tuple(part.split("/")) for part in harness.DOOR]
    door_ports = [(proto, int(port)) for proto, port in door]
    return {
        "one-time": records(one_time),
        "one-time-udp-index1": records(second),
        "door": records(door_ports),
        "door-two-sources": records(door_ports[:2], 0) + records(door_ports, 1) + records(door_ports[2:], 0),
        "noise-then-one-time": records([("tcp", 20001), ("tcp", 20002)]) + records(one_time),
    }


def config_seeds() -> dict[str, bytes]:
    text = harness.CONFIG_TEXT
    return {
        "init": text.encode(),
        "minimal": b'[firewall]\nprotect = ["tcp/22"]\n[policy]\nopen = ["tcp/22"]\n',
        "sniff": text.replace('mode = "serve"', 'mode = "sniff"').encode(),
    }


TARGETS = {"dns": dns_seeds, "icmp": icmp_seeds, "udp": udp_seeds, "sequence": sequence_seeds,
           "config": config_seeds}


def main() -> None:
    for target, make in TARGETS.items():
        directory = CORPUS / target
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in make().items():
            (directory / name).write_bytes(data)
        print(f"{target}: {len(list(directory.iterdir()))} files")


if __name__ == "__main__":
    main()
