"""clients/spa-knock.py, the standard-library-only client: same bytes as spa, own crypto.

The client is loaded from its path (it is not part of the package) and run
as a program under ``python -I -S``: isolated and without site-packages,
so any import beyond the standard library would fail these tests.

1. Every compact, extended and kind-0 datagram vector in docs/test-vectors.json.
2. Random keys, times and addresses: tokens and AES blocks equal spa.core's;
   datagrams (random inside) open with spa.core.datagram.
3. AES-256 and ChaCha20-Poly1305 against the ``cryptography`` package.
4. The command line: one-line errors, ``--print`` forms, key discovery.
"""

from __future__ import annotations

import ast
import importlib.util
import ipaddress
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from dnslib import QTYPE, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from spa.core import compact, datagram, encoding, kdf
from spa.core.events import Reason, Request

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "clients" / "spa-knock.py"
VECTORS: dict[str, Any] = json.loads((REPO / "docs" / "test-vectors.json").read_text())
KEYS = VECTORS["keys"]
O = bytes.fromhex(KEYS["obfuscation_key"])
S = bytes.fromhex(KEYS["secret"])
NOW = 1760000000
SETTINGS = settings(deadline=None, max_examples=150)


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("spa_knock", CLIENT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


knock = _load()


def aes(key: bytes, block: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return encryptor.update(block) + encryptor.finalize()


def ip(text: str | None) -> Any:
    return ipaddress.ip_address(text) if text else None


def write_key(directory: Path, text: str | None = None, mode: int = 0o600, filename: str = "alice.spakey",
              **changes: str | None) -> Path:
    """The example key (the vectors' key), with options replaced or removed (value None)."""
    text = text if text is not None else (REPO / "keys" / "example-alice.spakey").read_text()
    for option, value in changes.items():
        lines = [line for line in text.splitlines() if not line.startswith(f"{option} =")]
        if value is not None:
            lines.append(f"{option} = {value}")
        text = "\n".join(lines) + "\n"
    path = directory / filename
    path.write_text(text)
    os.chmod(path, mode)
    return path


def cli(*argv: str, home: Path, env: dict[str, str] | None = None,
        python: str = sys.executable) -> subprocess.CompletedProcess[str]:
    """Run the client as a person would, isolated (-I) and with no site-packages (-S)."""
    environment = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), **(env or {})}
    return subprocess.run([python, "-I", "-S", str(CLIENT), *argv], capture_output=True, text=True,
                          env=environment, timeout=60, check=False)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("spa-knock.py: ")
    return lines[0]


# 1. The vectors ---------------------------------------------------------------


def test_subkeys_and_the_example_key_file(tmp_path: Path) -> None:
    key = knock.load_key(str(write_key(tmp_path)))
    assert key.obfuscation_key == O and key.secret == S and key.key_id == KEYS["key_id"]
    assert key.mac_key.hex() == KEYS["mac_key"]
    assert key.aead_key.hex() == KEYS["datagram_aead_key"]
    assert [knock.format_request(r) for r in key.open] == KEYS["open"]
    assert (key.name, key.server, key.zone, key.udp_port) == ("alice", "192.0.2.1", "knock.example.com", 62201)


@pytest.mark.parametrize("case", VECTORS["compact"])
def test_compact_vectors(case: dict[str, Any]) -> None:
    mac_key = knock.derive(S, knock.TOKEN_MAC)
    token = knock.seal_compact(O, mac_key, KEYS["key_id"], case["time"], case["request_index"], ip(case["address"]))
    assert token.hex() == case["token"] == case["ping_pattern"]
    assert knock.to_label(token) == case["dns_label"]


@pytest.mark.parametrize("case", VECTORS["extended"])
def test_extended_vectors(case: dict[str, Any]) -> None:
    mac_key = knock.derive(S, knock.TOKEN_MAC)
    token = knock.seal_extended(O, mac_key, KEYS["key_id"], case["time"], case["request_index"], ip(case["address"]))
    assert token.hex() == case["token"]
    assert knock.to_label(token) == case["dns_label"]


@pytest.mark.parametrize("case", [c for c in VECTORS["datagram"] if c["kind"] == "aead"])
def test_datagram_vectors(case: dict[str, Any]) -> None:
    requests = [knock.parse_request(text) for text in case["requests"]]
    source = ip(case["packet_source"]) if case["mode"] == "source" else None
    packet = knock.seal_datagram(O, knock.derive(S, knock.DATAGRAM_AEAD), KEYS["key_id"], case["time"], requests,
                                 case["seconds"], address=ip(case["address"]), source=source,
                                 random=bytes.fromhex(case["random"]))
    assert packet.hex() == case["datagram"]
    mode = {"source": 0, "unbound": 1, "ipv4": 4, "ipv6": 6}[case["mode"]]
    assert knock.encode_body(mode, requests, case["seconds"], ip(case["address"])).hex() == case["body"]


def test_signed_vectors_are_the_only_ones_left_out() -> None:
    """Kind 1 (Ed25519) is the package's; everything else in the file is covered above."""
    kinds = {c["kind"] for c in VECTORS["datagram"]}
    assert kinds == {"aead", "signed"}


# 2. Random inputs against spa.core ---------------------------------------------

key_bytes = st.binary(min_size=32, max_size=32)
key_ids = st.integers(1, 0xFFFF)
times = st.integers(0, 0xFFFFFFFF)
indexes = st.integers(0, 255)
addresses = st.ip_addresses()
requests_ = st.lists(st.tuples(st.sampled_from(["tcp", "udp"]), st.integers(1, 65535)), min_size=1, max_size=16,
                     unique=True)


@SETTINGS
@given(key_bytes, st.binary(min_size=16, max_size=16))
def test_aes_block_equals_spa_obfuscator(key: bytes, block: bytes) -> None:
    assert knock.AES256(key).encrypt_block(block) == compact.Obfuscator(key).encrypt_block(block)


@SETTINGS
@given(key_bytes, key_bytes, key_ids, times, indexes, st.one_of(st.none(), addresses))
def test_compact_equals_spa(o: bytes, secret: bytes, key_id: int, when: int, index: int, address: Any) -> None:
    mac_key = kdf.derive(secret, kdf.TOKEN_MAC)
    assert knock.derive(secret, knock.TOKEN_MAC) == mac_key
    expected = compact.seal_compact(compact.Obfuscator(o), mac_key, key_id, when, index, address)
    token = knock.seal_compact(o, mac_key, key_id, when, index, address)
    assert token == expected
    assert knock.to_label(token) == encoding.to_label(expected)


@SETTINGS
@given(key_bytes, key_bytes, key_ids, times, indexes, addresses)
def test_extended_equals_spa(o: bytes, secret: bytes, key_id: int, when: int, index: int, address: Any) -> None:
    mac_key = kdf.derive(secret, kdf.TOKEN_MAC)
    expected = compact.seal_extended(compact.Obfuscator(o), mac_key, key_id, when, index, address)
    token = knock.seal_extended(o, mac_key, key_id, when, index, address)
    assert token == expected
    assert knock.to_label(token) == encoding.to_label(expected)
    assert knock.dns_name(token, "knock.example.com") == f"{encoding.to_label(expected)}.knock.example.com."


@SETTINGS
@given(key_bytes, key_bytes, key_ids, times, requests_, st.integers(0, 0xFFFF), addresses,
       st.sampled_from(["source", "unbound", "explicit"]), addresses)
def test_datagram_opens_with_spa(o: bytes, secret: bytes, key_id: int, when: int, wanted: list[tuple[str, int]],
                                 seconds: int, address: Any, how: str, source: Any) -> None:
    aead_key = kdf.derive(secret, kdf.DATAGRAM_AEAD)
    assert knock.derive(secret, knock.DATAGRAM_AEAD) == aead_key
    packet = knock.seal_datagram(o, aead_key, key_id, when, wanted, seconds,
                                 address=address if how == "explicit" else None,
                                 source=source if how == "source" else None)
    assert len(packet) <= datagram.MAX_SIZE
    obfuscator = compact.Obfuscator(o)
    header = datagram.open_header(obfuscator, packet)
    assert header is not None
    assert (header.kind, header.key_id, header.time) == (datagram.Kind.AEAD, key_id, when)
    body = datagram.open_body(header, packet, ChaCha20Poly1305(aead_key), source)
    mode = {"source": datagram.Mode.SOURCE, "unbound": datagram.Mode.UNBOUND,
            "explicit": datagram.Mode.IPV4 if address.version == 4 else datagram.Mode.IPV6}[how]
    expected = datagram.Body(mode, tuple(Request(p, n) for p, n in wanted), seconds,
                             address if how == "explicit" else None)
    assert body == expected
    if how == "source":  # bound to the source: from anywhere else it does not open
        other = ipaddress.ip_address(int(source) ^ 1) if source.version == 4 else ipaddress.IPv6Address(int(source) ^ 1)
        assert datagram.open_body(header, packet, ChaCha20Poly1305(aead_key), other) == Reason.BAD_MAC


# 3. The primitives against the cryptography package and the specifications -----


def test_aes_fips197_appendix_c3() -> None:
    key = bytes(range(32))
    plain = bytes.fromhex("00112233445566778899aabbccddeeff")
    assert knock.aes256_encrypt_block(key, plain).hex() == "8ea2b7ca516745bfeafc49904b496089"


def test_sbox_is_the_fips197_table() -> None:
    assert knock._SBOX[:4] == [0x63, 0x7C, 0x77, 0x7B] and knock._SBOX[0x53] == 0xED
    assert knock._SBOX[0xFF] == 0x16 and sorted(knock._SBOX) == list(range(256))


def test_chacha20_poly1305_rfc8439_section_2_8_2() -> None:
    key = bytes(range(0x80, 0xA0))
    nonce = bytes.fromhex("070000004041424344454647")
    aad = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
    plain = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the "
             b"future, sunscreen would be it.")
    sealed = knock.chacha20_poly1305_encrypt(key, nonce, plain, aad)
    assert sealed[:16].hex() == "d31a8d34648e60db7b86afbc53ef7ec2"
    assert sealed[-16:].hex() == "1ae10b594f09e26a7e902ecbd0600691"
    assert sealed == ChaCha20Poly1305(key).encrypt(nonce, plain, aad)


def test_chacha20_block_rfc8439_section_2_3_2() -> None:
    block = knock.chacha20_block(bytes(range(32)), 1, bytes.fromhex("000000090000004a00000000"))
    assert block[:16].hex() == "10f1e7e4d13b5915500fdd1fa32071c4"


@SETTINGS
@given(key_bytes, st.binary(min_size=16, max_size=16))
def test_aes_equals_cryptography(key: bytes, block: bytes) -> None:
    assert knock.aes256_encrypt_block(key, block) == aes(key, block)


@SETTINGS
@given(key_bytes, st.binary(min_size=12, max_size=12), st.binary(max_size=300), st.binary(max_size=80))
def test_chacha20_poly1305_equals_cryptography(key: bytes, nonce: bytes, plain: bytes, aad: bytes) -> None:
    assert knock.chacha20_poly1305_encrypt(key, nonce, plain, aad) == ChaCha20Poly1305(key).encrypt(nonce, plain, aad)


def test_one_knock_is_fast(tmp_path: Path) -> None:
    """The pure-Python crypto for one datagram and one extended token: well under 50 ms."""
    key = knock.load_key(str(write_key(tmp_path)))
    address = ipaddress.ip_address("198.51.100.7")
    spent = []
    for _ in range(30):
        start = time.perf_counter()
        knock.seal_datagram(key.obfuscation_key, key.aead_key, key.key_id, NOW, [("tcp", 22)], source=address)
        knock.seal_extended(key.obfuscation_key, key.mac_key, key.key_id, NOW, 0, address)
        spent.append(time.perf_counter() - start)
    assert statistics.median(spent) < 0.05, spent


# 4. Standard library only, Python 3.8 -------------------------------------------


def test_imports_only_the_standard_library() -> None:
    tree = ast.parse(CLIENT.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module is not None
            imported.add(node.module.split(".")[0])
    assert imported and imported <= sys.stdlib_module_names, imported - sys.stdlib_module_names


def test_parses_as_python_3_8() -> None:
    """Runs everywhere (CI has no 3.8: Debian 12 ships 3.11): the 3.8 grammar must accept the file."""
    ast.parse(CLIENT.read_text(), feature_version=(3, 8))
    with pytest.raises(SyntaxError):  # the check itself can fail: 3.10's match is refused
        ast.parse("match x:\n    case 1:\n        pass\n", feature_version=(3, 8))


def _python38() -> str | None:
    """A working Python 3.8: on PATH, or one of pyenv's (whose shim may not be usable)."""
    pyenv = Path.home() / ".pyenv" / "versions"
    candidates = [shutil.which("python3.8"), *map(str, sorted(pyenv.glob("3.8*/bin/python3.8")))]
    for candidate in filter(None, candidates):
        check = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 8))"],
                               capture_output=True, text=True, timeout=30, check=False)
        if check.stdout.strip() == "True":
            return candidate
    return None


def test_runs_on_python_3_8(tmp_path: Path) -> None:
    """The oldest Python it promises, when this machine has one (pyenv's, here).

    Not installable from Debian or PyPI, so CI skips it honestly; the grammar
    check above always runs.
    """
    python = _python38()
    if python is None:
        pytest.skip("no Python 3.8 interpreter on this machine (not a Debian 12 package)")
    key = write_key(tmp_path)
    case = VECTORS["extended"][0]
    result = cli("--key", str(key), "--via", "dns", "--ip", case["address"], "--at", str(NOW), "--print",
                 home=tmp_path, python=python)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"nslookup {case['dns_label']}.knock.example.com.\n"
    result = cli("--key", str(key), "--ip", "203.0.113.9", "--print", home=tmp_path, python=python)
    assert result.returncode == 0, result.stderr
    assert opened(bytes.fromhex(result.stdout.strip()), ipaddress.ip_address("192.0.2.53")).address == ip("203.0.113.9")


# 5. The command line --------------------------------------------------------------


def opened(packet: bytes, source: Any) -> datagram.Body:
    header = datagram.open_header(compact.Obfuscator(O), packet)
    assert header is not None and header.key_id == KEYS["key_id"]
    body = datagram.open_body(header, packet, ChaCha20Poly1305(bytes.fromhex(KEYS["datagram_aead_key"])), source)
    assert isinstance(body, datagram.Body)
    return body


def test_print_ping_command(tmp_path: Path) -> None:
    key = str(write_key(tmp_path))
    for case in VECTORS["compact"]:
        argv = ["--key", key, "--via", "icmp", "--at", str(case["time"]), "--open", case["request"]]
        argv += ["--ip", case["address"]] if case["address"] else ["--unbound"]
        result = cli(*argv, "--print", "server.example.com", home=tmp_path)
        assert result.returncode == 0, result.stderr
        six = "-6 " if case["address"] and ":" in case["address"] else ""
        assert result.stdout == f"ping {six}-c 2 -p {case['ping_pattern']} server.example.com\n"
        assert result.stderr == ""
    # Without --print too: --via icmp only ever prints.
    result = cli("--key", key, "--via", "icmp", "--ip", "198.51.100.7", "--at", str(NOW), home=tmp_path)
    assert result.stdout == f"ping -c 2 -p {VECTORS['compact'][0]['ping_pattern']} 192.0.2.1\n"


def test_print_ping_binds_the_local_source_address(tmp_path: Path) -> None:
    result = cli("--key", str(write_key(tmp_path)), "--via", "icmp", "--at", str(NOW), "127.0.0.1", home=tmp_path)
    assert result.returncode == 0, result.stderr
    mac_key = bytes.fromhex(KEYS["mac_key"])
    token = compact.seal_compact(compact.Obfuscator(O), mac_key, KEYS["key_id"], NOW, 0, ip("127.0.0.1"))
    assert result.stdout == f"ping -c 2 -p {token.hex()} 127.0.0.1\n"


def test_ping_on_windows_and_macos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    key = str(write_key(tmp_path))
    monkeypatch.setattr(knock, "_windows", lambda: True)
    assert knock.main(["--key", key, "--via", "icmp", "--ip", "198.51.100.7", "--at", str(NOW)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("ping -c 2 -p ")
    assert "ping.exe cannot carry a pattern" in err and "--via dns" in err
    monkeypatch.setattr(knock, "_windows", lambda: False)
    monkeypatch.setattr(knock, "_macos", lambda: True)
    assert knock.main(["--key", key, "--via", "icmp", "--ip", "2001:db8::7", "--at", str(NOW), "h"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("ping6 -c 2 -s 56 -p ") and out.endswith(" h\n") and err == ""


def test_print_dns_forms(tmp_path: Path) -> None:
    key = str(write_key(tmp_path))
    # Through this machine's resolver (the default): an extended token, no server on the command line.
    for case in VECTORS["extended"]:
        result = cli("--key", key, "--via", "dns", "--ip", case["address"], "--at", str(NOW), "--print", home=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"nslookup {case['dns_label']}.knock.example.com.\n"
    # Through a named resolver, or straight to the server, with --ip: the same token (and
    # printing it needs no name lookup: the .invalid name would not resolve).
    case = VECTORS["extended"][0]
    result = cli("--key", key, "--via", "dns", "--dns-server", "resolver.invalid", "--ip", case["address"],
                 "--at", str(NOW), "--print", home=tmp_path)
    assert result.stdout == f"nslookup {case['dns_label']}.knock.example.com. resolver.invalid\n"
    # Straight to the spa server, no --ip: a compact token bound to the local source address.
    result = cli("--key", key, "--via", "dns", "--dns-server", "127.0.0.1", "--at", str(NOW), "--print", "127.0.0.1",
                 home=tmp_path)
    assert result.returncode == 0, result.stderr
    mac_key = bytes.fromhex(KEYS["mac_key"])
    token = compact.seal_compact(compact.Obfuscator(O), mac_key, KEYS["key_id"], NOW, 0, ip("127.0.0.1"))
    assert result.stdout == f"nslookup {encoding.to_label(token)}.knock.example.com. 127.0.0.1\n"
    # --dns-server naming the spa server by another name of the same address is direct too.
    again = cli("--key", key, "--via", "dns", "--at", str(NOW), "--print", "-4", "--dns-server", "localhost", "127.0.0.1",
                home=tmp_path)
    assert again.stdout == result.stdout.replace(" 127.0.0.1\n", " localhost\n")


def test_print_udp_datagram(tmp_path: Path) -> None:
    key = str(write_key(tmp_path))
    result = cli("--key", key, "--ip", "203.0.113.9", "--open", "tcp/22,tcp/3389", "--seconds", "120",
                 "--at", str(NOW), "--print", home=tmp_path)
    assert result.returncode == 0, result.stderr
    body = opened(bytes.fromhex(result.stdout.strip()), ip("192.0.2.53"))
    assert body == datagram.Body(datagram.Mode.IPV4, (Request("tcp", 22), Request("tcp", 3389)), 120,
                                 ip("203.0.113.9"))
    result = cli("--key", key, "--at", str(NOW), "--print", "127.0.0.1", home=tmp_path)
    assert result.returncode == 0, result.stderr
    body = opened(bytes.fromhex(result.stdout.strip()), ip("127.0.0.1"))
    assert body == datagram.Body(datagram.Mode.SOURCE, (Request("tcp", 22),), 0)
    result = cli("--key", key, "--unbound", "--open", "tcp/3389", "--print", home=tmp_path)
    assert opened(bytes.fromhex(result.stdout.strip()), ip("127.0.0.1")).mode == datagram.Mode.UNBOUND


def test_help_has_examples(tmp_path: Path) -> None:
    result = cli("--help", home=tmp_path)
    assert result.returncode == 0
    assert "examples:" in result.stdout and "py spa-knock.py --key alice.spakey" in result.stdout
    assert "--via {udp,dns,icmp}" in result.stdout


@pytest.mark.parametrize(("argv", "expected"), [
    (["--key", "/nonexistent/alice.spakey"], "/nonexistent/alice.spakey: no such key file"),
    ([], "no key file: pass --key FILE, set SPA_KEY"),
    (["--via", "smoke"], "argument --via: invalid choice: 'smoke'"),
    (["--key", "K", "--open", "tcp/80"], "this key may open tcp/22, tcp/3389, not tcp/80"),
    (["--key", "K", "--open", "sctp/1"], "--open: expected proto/port"),
    (["--key", "K", "--ip", "auto"], "--ip auto is not supported"),
    (["--key", "K", "--ip", "alice"], "--ip: 'alice' is not an IPv4 or IPv6 address"),
    (["--key", "K", "--ip", "198.51.100.7", "--unbound"], "--ip and --unbound exclude each other"),
    (["--key", "K", "--via", "dns", "--open", "tcp/22,tcp/3389"], "a DNS or ping token names one port"),
    (["--key", "K", "--via", "icmp", "--seconds", "5"], "--seconds goes with --via udp"),
    (["--key", "K", "--nslookup"], "--dns-server and --nslookup go with --via dns"),
    (["--key", "K", "--at", "soon"], "argument --at: invalid int value"),
    (["--key", "K", "--at=-5", "--ip", "198.51.100.7", "--print"], "time must be a Unix time"),
    (["--key", "K", "--at=4294967296", "--ip", "198.51.100.7", "--print"], "time must be a Unix time"),
    (["--key", "K", "--via", "dns"], "name the address to open with --ip"),
    (["--key", "K", "--via", "dns", "--unbound"], "name the address to open with --ip"),
    (["--key", "K", "--via", "dns", "--dns-server", "127.0.0.2", "127.0.0.1"], "name the address to open with --ip"),
])
def test_errors_are_one_line(tmp_path: Path, argv: list[str], expected: str) -> None:
    key = str(write_key(tmp_path))
    line = one_line_error(cli(*[key if part == "K" else part for part in argv], home=tmp_path))
    assert expected in line


def test_group_readable_key_is_refused_with_the_fix(tmp_path: Path) -> None:
    key = write_key(tmp_path, mode=0o640)
    line = one_line_error(cli("--key", str(key), "--print", home=tmp_path))
    assert "readable by group or others (mode 0640)" in line and f"chmod 600 {key}" in line


@pytest.mark.parametrize("server", ['""', None])
def test_no_host_and_no_server_in_the_key(tmp_path: Path, server: str | None) -> None:
    key = write_key(tmp_path, server=server)
    line = one_line_error(cli("--key", str(key), "--print", home=tmp_path))
    assert "no HOST given and the key file names no server" in line
    ok = cli("--key", str(key), "--ip", "198.51.100.7", "--print", "192.0.2.1", home=tmp_path)
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize(("text", "changes", "expected"), [
    ("[server]\nhost = 1\n", {}, ":1: expected option = value"),
    (None, {"format": '"spa-key-2"'}, 'format: expected "spa-key-1"'),
    (None, {"secret": None}, "secret: missing"),
    (None, {"secret": None, "signing_key": '"' + "ab" * 32 + '"'}, "this is an Ed25519 key"),
    (None, {"secret": '"abcd"'}, "secret: expected 64 hex digits"),
    (None, {"key_id": "0"}, "key_id: expected a whole number 1-65535"),
    (None, {"open": '"tcp/22,icmp/0"'}, "open: expected proto/port"),
    (None, {"default_open": '"udp/53"'}, "default_open: must be one of the ports in open"),
    (None, {"name": '"Alice"'}, "name: expected 1-12 lowercase letters"),
    (None, {"zone": '"unterminated'}, "unterminated string"),
    (None, {"zone": '"knock.example.com" trailing'}, "unexpected text after the value"),
])
def test_broken_key_files_are_one_line(tmp_path: Path, text: str | None, changes: dict[str, str | None],
                                       expected: str) -> None:
    key = write_key(tmp_path, text, **changes)
    assert expected in one_line_error(cli("--key", str(key), "--print", home=tmp_path))


def test_key_file_syntax_tolerated(tmp_path: Path) -> None:
    """What TOML allows in these flat files: comments after values, literal strings, CRLF, a BOM."""
    text = (REPO / "keys" / "example-alice.spakey").read_text()
    text = text.replace('zone = "knock.example.com"', "zone = 'Knock.Example.com.'  # the knock zone")
    text = text.replace("udp_port = 62201", "udp_port = 62_201 # default")
    path = tmp_path / "crlf.spakey"
    path.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    os.chmod(path, 0o600)
    key = knock.load_key(str(path))
    assert key.zone == "knock.example.com" and key.udp_port == 62201 and key.secret == S


def test_no_zone_for_dns(tmp_path: Path) -> None:
    key = write_key(tmp_path, zone='""')
    assert "names no DNS zone" in one_line_error(cli("--key", str(key), "--via", "dns", "--print", home=tmp_path))


def test_key_found_by_env_then_config_directory(tmp_path: Path) -> None:
    home = tmp_path / "home"
    config = home / ".config" / "spa"
    config.mkdir(parents=True)
    argv = ["--via", "icmp", "--ip", "198.51.100.7", "--at", str(NOW)]
    expected = f"ping -c 2 -p {VECTORS['compact'][0]['ping_pattern']} 192.0.2.1\n"
    write_key(config)
    assert cli(*argv, home=home).stdout == expected
    other = write_key(tmp_path, filename="other.spakey", server='"192.0.2.99"')
    assert cli(*argv, home=home, env={"SPA_KEY": str(other)}).stdout.endswith(" 192.0.2.99\n")
    write_key(config, filename="bob.spakey")
    line = one_line_error(cli(*argv, home=home))
    assert "2 key files in" in line and "alice.spakey, bob.spakey" in line and "--key" in line


# The sending paths, against sockets on loopback ----------------------------------


def test_udp_knock_is_one_datagram_that_opens(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(10)
        key = write_key(tmp_path, udp_port=str(server.getsockname()[1]))
        result = cli("--key", str(key), "--open", "tcp/3389", "127.0.0.1", home=tmp_path)
        assert result.returncode == 0, result.stderr
        packet, sender = server.recvfrom(2048)
    assert "sent an SPA datagram for tcp/3389 to 127.0.0.1" in result.stdout
    assert opened(packet, ip(sender[0])) == datagram.Body(datagram.Mode.SOURCE, (Request("tcp", 3389),), 0)


class FakeDNS:
    """Answers every query on loopback like spa does (NOERROR, no data), or stays silent."""

    def __init__(self, answer: bool) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.answer = answer
        self.queries: list[bytes] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                query, peer = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            self.queries.append(query)
            if self.answer:
                self.sock.sendto(b"\x00\x00" + query[2:], peer)  # a wrong id first: ignored
                self.sock.sendto(query[:2] + bytes([0x81, 0x80]) + query[4:], peer)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def test_dns_query_is_a_plain_a_query() -> None:
    query = knock.dns_query("fpwusuqfu5irmh54uhldrr3eyu.knock.example.com.", 0x1234)
    parsed = DNSRecord.parse(query)
    assert parsed.header.id == 0x1234 and parsed.header.rd == 1 and parsed.header.qr == 0
    assert [(str(q.qname), q.qtype, q.qclass) for q in parsed.questions] == [
        ("fpwusuqfu5irmh54uhldrr3eyu.knock.example.com.", QTYPE.A, 1)]
    assert not parsed.rr and not parsed.ar


def test_ask_dns_waits_for_the_matching_answer() -> None:
    server = FakeDNS(answer=True)
    try:
        rcode = knock.ask_dns(socket.AF_INET, server.sock.getsockname(), "x.knock.example.com.", timeout=2, tries=3)
    finally:
        server.close()
    assert rcode == 0 and len(server.queries) == 1


def test_ask_dns_retries_then_gives_up() -> None:
    server = FakeDNS(answer=False)
    try:
        rcode = knock.ask_dns(socket.AF_INET, server.sock.getsockname(), "x.knock.example.com.", timeout=0.3, tries=3)
    finally:
        server.close()
    assert rcode is None and len(server.queries) == 3 and len(set(server.queries)) == 1


def test_dns_knock_without_an_answer_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    server = FakeDNS(answer=False)
    monkeypatch.setattr(knock, "DNS_PORT", server.sock.getsockname()[1])
    monkeypatch.setattr(knock, "DNS_TIMEOUT", 0.2)
    try:
        assert knock.main(["--key", str(write_key(tmp_path)), "--via", "dns", "--dns-server", "127.0.0.1",
                           "127.0.0.1"]) == 1
    finally:
        server.close()
    assert "no answer from 127.0.0.1 after 3 tries" in capsys.readouterr().err
    label = DNSRecord.parse(server.queries[0]).questions[0].qname.label[0].decode()
    assert len(label) == 26  # a compact token, bound to the source


def test_dns_knock_reports_the_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    server = FakeDNS(answer=True)
    monkeypatch.setattr(knock, "DNS_PORT", server.sock.getsockname()[1])
    try:
        assert knock.main(["--key", str(write_key(tmp_path)), "--via", "dns", "--ip", "198.51.100.7",
                           "--dns-server", "127.0.0.1", "--at", str(NOW), "127.0.0.1"]) == 0
    finally:
        server.close()
    case = VECTORS["extended"][0]
    assert capsys.readouterr().out == f"queried {case['dns_label']}.knock.example.com. at 127.0.0.1 (answer: NOERROR)\n"


def test_dns_through_the_resolver_of_resolv_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    server = FakeDNS(answer=True)
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("# generated\nsearch example.org\nnameserver bogus\nnameserver 127.0.0.1\nnameserver 192.0.2.9\n")
    monkeypatch.setattr(knock, "RESOLV_CONF", str(resolv))
    monkeypatch.setattr(knock, "DNS_PORT", server.sock.getsockname()[1])
    try:
        assert knock.main(["--key", str(write_key(tmp_path)), "--via", "dns", "--ip", "198.51.100.7",
                           "--at", str(NOW)]) == 0
    finally:
        server.close()
    name = f"{VECTORS['extended'][0]['dns_label']}.knock.example.com."
    assert capsys.readouterr().out == f"queried {name} through the resolver 127.0.0.1 (answer: NOERROR)\n"
    assert str(DNSRecord.parse(server.queries[0]).questions[0].qname) == name


def test_dns_through_the_operating_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """No resolv.conf (Windows): the OS resolver is asked with getaddrinfo."""
    asked: list[str] = []

    def getaddrinfo(name: str, *args: Any) -> Any:
        asked.append(name)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")  # what NODATA looks like

    monkeypatch.setattr(knock, "RESOLV_CONF", str(tmp_path / "missing"))
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    assert knock.main(["--key", str(write_key(tmp_path)), "--via", "dns", "--ip", "198.51.100.7",
                       "--at", str(NOW)]) == 0
    name = f"{VECTORS['extended'][0]['dns_label']}.knock.example.com."
    assert asked == [name]
    assert capsys.readouterr().out == f"looked up {name} through this machine's resolver\n"


def test_key_directory_on_windows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    appdata = tmp_path / "AppData" / "Roaming"
    (appdata / "spa").mkdir(parents=True)
    key = write_key(appdata / "spa")
    monkeypatch.setattr(knock, "_windows", lambda: True)
    assert knock.find_key(None, {"APPDATA": str(appdata)}, str(tmp_path)) == str(key)
    monkeypatch.setattr(knock, "_windows", lambda: False)
    with pytest.raises(knock.KnockError, match="no key file"):
        knock.find_key(None, {"APPDATA": str(appdata)}, str(tmp_path))


def test_nslookup_missing_is_one_line(tmp_path: Path) -> None:
    key = write_key(tmp_path)
    result = subprocess.run([sys.executable, "-I", "-S", str(CLIENT), "--key", str(key), "--via", "dns", "--nslookup",
                             "--ip", "198.51.100.7", "127.0.0.1"], capture_output=True, text=True, timeout=60,
                            env={"PATH": str(tmp_path), "HOME": str(tmp_path)}, check=False)
    assert "nslookup is not installed here" in one_line_error(result)
