"""The knocking side without a network: STUN messages, key discovery, spa token."""

from __future__ import annotations

import ipaddress
import os
import shutil
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spa.cli import main
from spa.client import keyfile, stun, tokens
from spa.core import compact, encoding
from spa.core.keys import load_client_key
from spa.errors import KeyFileError

EXAMPLE = Path(__file__).resolve().parents[2] / "keys" / "example-alice.spakey"


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    path = tmp_path / "alice.spakey"
    shutil.copy(EXAMPLE, path)
    os.chmod(path, 0o600)
    return path


def _success(transaction: bytes, attributes: bytes) -> bytes:
    return struct.pack("!HHI12s", stun.BINDING_SUCCESS, len(attributes), stun.MAGIC_COOKIE, transaction) + attributes


@given(st.binary(min_size=12, max_size=12), st.ip_addresses())
def test_xor_mapped_address_round_trip(transaction: bytes, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    key = struct.pack("!I", stun.MAGIC_COOKIE) + transaction
    packed = address.packed
    xored = bytes(a ^ b for a, b in zip(packed, key, strict=False))
    family = 1 if address.version == 4 else 2
    value = bytes([0, family]) + struct.pack("!H", 1234 ^ 0x2112) + xored
    attribute = struct.pack("!HH", stun.XOR_MAPPED_ADDRESS, len(value)) + value
    assert stun.mapped_address(_success(transaction, attribute), transaction) == address


def test_stun_refuses_other_transactions_and_junk() -> None:
    transaction = bytes(range(12))
    assert stun.request(transaction)[:8] == bytes.fromhex("000100002112a442")
    value = bytes([0, 1, 0, 0]) + bytes(4)
    attribute = struct.pack("!HH", stun.MAPPED_ADDRESS, 8) + value
    assert stun.mapped_address(_success(transaction, attribute), transaction) == ipaddress.ip_address("0.0.0.0")
    assert stun.mapped_address(_success(bytes(12), attribute), transaction) is None
    assert stun.mapped_address(b"\x01\x01" + bytes(30), transaction) is None
    assert stun.mapped_address(b"", transaction) is None
    assert stun.parse_server("[2001:db8::1]:3479") == ("2001:db8::1", 3479)
    assert stun.parse_server("stun.example.net") == ("stun.example.net", 3478)


_attributes = st.lists(
    st.tuples(st.sampled_from([stun.XOR_MAPPED_ADDRESS, stun.MAPPED_ADDRESS, 0x8022, 0]),
              st.integers(0, 40), st.binary(max_size=40)),
    max_size=5,
).map(lambda items: b"".join(struct.pack("!HH", kind, size) + value for kind, size, value in items))


@given(st.one_of(st.binary(max_size=120), st.tuples(st.binary(max_size=4), _attributes).map(
    lambda parts: _success(bytes(12), parts[1])[:20] + parts[0] + parts[1])), st.booleans())
def test_stun_response_parser_gives_an_address_or_none(response: bytes, fix_length: bool) -> None:
    if fix_length and len(response) >= 20:
        response = response[:2] + struct.pack("!H", len(response) - 20) + response[4:]
    found = stun.mapped_address(response, bytes(12))
    assert found is None or isinstance(found, (ipaddress.IPv4Address, ipaddress.IPv6Address))


@given(st.text(max_size=40))
def test_stun_server_parser_gives_host_and_port_or_value_error(text: str) -> None:
    # public_address catches ValueError and names the server; nothing else may escape.
    try:
        host, port = stun.parse_server(text)
    except ValueError:
        return
    assert isinstance(host, str) and 1 <= port <= 65535


@pytest.mark.parametrize("text", ["stun.example.net:70000", "192.0.2.1:0", "192.0.2.1:\u0663", "[2001:db8::1]:99999"])
def test_stun_server_with_an_impossible_port_is_refused(text: str) -> None:
    # Regression: 70000 reached getaddrinfo, which asks port 4464 instead.
    with pytest.raises(ValueError, match="1-65535"):
        stun.parse_server(text)


def test_key_file_is_found_by_flag_then_env_then_config_dir(key_path: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("SPA_KEY", raising=False)
    with pytest.raises(KeyFileError, match="no key file"):
        keyfile.find(None)
    (tmp_path / "config" / "spa").mkdir(parents=True)
    shutil.copy(key_path, tmp_path / "config" / "spa" / "alice.spakey")
    assert keyfile.find(None) == tmp_path / "config" / "spa" / "alice.spakey"
    shutil.copy(key_path, tmp_path / "config" / "spa" / "bob.spakey")
    with pytest.raises(KeyFileError, match="several key files"):
        keyfile.find(None)
    monkeypatch.setenv("SPA_KEY", str(key_path))
    assert keyfile.find(None) == key_path
    assert keyfile.find("other.spakey") == Path("other.spakey")


def test_spa_token_prints_what_the_gate_expects(key_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = load_client_key(key_path)
    address = ipaddress.ip_address("198.51.100.7")
    assert main(["token", "--key", str(key_path), "--via", "icmp", "--ip", str(address), "--at", "1760000000"]) == 0
    expected = tokens.compact_token(key, 1760000000, address)
    assert capsys.readouterr().out.strip() == expected.hex()
    assert main(["token", "--key", str(key_path), "--via", "dns", "--ip", str(address), "--at", "1760000000",
                 "--command"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("nslookup ") and line.endswith(f".{key.zone}.")
    label = line.split()[1].split(".")[0]
    assert encoding.from_label(label) == tokens.extended_token(key, 1760000000, address)
    assert len(label) <= 63 and compact.open_block(compact.Obfuscator(key.obfuscation_key), encoding.from_label(label)[:16])


def test_spa_token_errors(key_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--key", str(key_path), "--open", "tcp/8080", "--ip", "192.0.2.1"]) == 1
    assert "may open" in capsys.readouterr().err
    assert main(["token", "--key", str(key_path), "--ip", "not-an-ip"]) == 1
    assert "--ip" in capsys.readouterr().err
    assert main(["token", "--key", str(key_path.with_name("missing.spakey")), "--ip", "192.0.2.1"]) == 1
    assert "missing.spakey" in capsys.readouterr().err


def test_spa_token_sequence_is_the_knock_command(key_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from spa.core.sequence import SequenceRule

    key = load_client_key(key_path)
    assert main(["token", "--key", str(key_path), "--via", "sequence", "--at", "1760000000", "--command"]) == 0
    ports = tokens.otp_sequence(key, 1760000000, SequenceRule())
    assert capsys.readouterr().out.strip() == f"knock {key.server} {' '.join(map(str, ports))}"
