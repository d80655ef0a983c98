"""What the loaders accept, the runtime takes: issue 13, MEDIUM 7 and its class.

A value that ``spa check`` passes but the worker, the gate, the keyring or
the DNS zone then refuses is worse than a refused config: the running server
crashes on it (at a reload, at the first knock that touches it, or in a
restart loop). Each rule is checked once, at load, with file, line and option;
these tests build the runtime objects from whatever loaded.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_config import _set_option
from test_config import edits as _config_edits

from spa import config
from spa.cli import main
from spa.core import keys, otp
from spa.core.keyring import Keyring
from spa.core.ledger import Ledger
from spa.daemon.listeners import wanted
from spa.daemon.worker import Worker
from spa.errors import ConfigError
from spa.firewall import nft_render
from spa.intake.bpf import compile_filter

ALICE = ipaddress.ip_address("198.51.100.7")


@pytest.fixture
def server(tmp_path: Path) -> Path:
    assert main(["init", "--dir", str(tmp_path / "srv"), "--protect", "tcp/22",
                 "--zone", "knock.example.test", "--backend", "dry-run"]) == 0
    path = tmp_path / "srv" / "spa.toml"
    assert main(["keygen", "alice", "--config", str(path), "--server", "192.0.2.1",
                 "--out", str(tmp_path / "alice.spakey"), "--totp", "--emergency", "2"]) == 0
    return path


def secret(bits: int) -> str:
    """A base32 secret of ``bits`` bits (a multiple of 40: no padding needed)."""
    return base64.b32encode(b"\x5a" * (bits // 8)).decode()


def runs(path: Path) -> None:
    """Build what ``spa serve`` builds from ``path`` and knock every key with an OTP code."""
    loaded = config.load(path)
    keyring = config.load_keyring(loaded)
    worker = Worker(loaded, keyring, Ledger(700), lambda message: None)
    worker.tick(time.time())
    for entry in keyring.by_id.values():
        for digits in ("123456", "12345678", "1234567890"):
            worker.label(f"{entry.name}-{digits}", ALICE, time.time())


def _set(path: Path, option: str, value: str) -> int:
    """Replace ``option = ...`` in ``path``; the line it is on."""
    lines = path.read_text().split("\n")
    index = next(i for i, line in enumerate(lines) if line.startswith(f"{option} ="))
    lines[index] = f"{option} = {value}"
    path.write_text("\n".join(lines))
    return index + 1


@pytest.mark.parametrize("option", ["totp_secret", "emergency_secret"])
@pytest.mark.parametrize("bits", [80, 104])
def test_an_otp_secret_shorter_than_112_bits_is_refused_where_it_is_written(
        server: Path, option: str, bits: int) -> None:
    path = server.parent / "keys" / "alice.toml"
    short = base64.b32encode(b"\x5a" * (bits // 8)).decode().rstrip("=")
    line = _set(path, option, f'"{short}"')
    with pytest.raises(ConfigError) as caught:
        config.load_keyring(config.load(server))
    assert (caught.value.path, caught.value.line, caught.value.option) == (str(path), line, option)
    assert "112 bits" in str(caught.value)


@pytest.mark.parametrize("bits", [120, 160, 320])
def test_an_otp_secret_of_112_bits_or_more_loads_and_serves(server: Path, bits: int) -> None:
    path = server.parent / "keys" / "alice.toml"
    _set(path, "totp_secret", f'"{secret(bits)}"')
    _set(path, "emergency_secret", f'"{secret(bits)}"')
    runs(server)


def test_the_rule_is_the_pinned_pyotps_own() -> None:
    """Every secret otp.secret_problem passes, pyotp computes codes for; every one it refuses, says why."""
    for size in range(0, 40):
        text = base64.b32encode(bytes(range(size))).decode()
        problem = otp.secret_problem(text)
        try:
            otp.emergency_codes(text, 1), otp.totp_matches(text, "123456", 0)
        except ValueError:
            assert problem is not None, text
        else:
            assert problem is None, (text, problem)
    assert otp.secret_problem("not base32!") is not None
    assert otp.secret_problem(otp.new_secret()) is None


@pytest.mark.parametrize(
    "old,new,option,message",
    [
        ("ttl = 1 ", "ttl = 6 ", "carriers.dns.ttl", "0 to 5"),
        ("ttl = 1 ", "ttl = 300 ", "carriers.dns.ttl", "0 to 5"),
        ('zone = "knock.example.test"', 'zone = "' + "a" * 63 + "." + "b" * 63 + "." + "c" * 58 + '.test"',
         "carriers.dns.zone", "189"),
        ('mode = "serve"', 'mode = "serve"\naddresses = ["192.0.2.53"]\nnameservers = ["ns1.example.net"]',
         "carriers.dns.addresses", "glue"),
    ],
)
def test_dns_values_the_zone_would_refuse_are_refused_at_load(
        server: Path, old: str, new: str, option: str, message: str) -> None:
    text = server.read_text()
    assert old in text
    server.write_text(text.replace(old, new, 1))
    with pytest.raises(ConfigError) as caught:
        config.load(server)
    assert caught.value.option == option and message in str(caught.value), caught.value
    assert caught.value.line is not None


def test_a_keyring_is_only_ever_built_from_records_the_loader_passed(server: Path) -> None:
    """Keyring() itself never meets a short secret: the loader refused it (no ValueError at SIGHUP)."""
    record = config.load_keyring(config.load(server)).by_name["alice"].record
    obfuscation = config.read_server_secret(config.load(server).secret_file)
    Keyring(obfuscation, [record])


# -- the class: anything that loads, runs ------------------------------------------

_dns_edits = st.fixed_dictionaries({}, optional={
    "ttl": st.integers(-1, 400).map(str),
    "zone": st.sampled_from(['"knock.example.test"', '"a.b"', '"' + "x" * 63 + "." + "y" * 63 + "." + "z" * 61 + '.t"',
                             '"' + "x" * 63 + "." + "y" * 63 + "." + "z" * 58 + '.tt"', '"ex-ample.test."']),
    "nameservers": st.sampled_from(['["ns1.example.net"]', '["ns1.knock.example.test"]', '[]',
                                    '["ns1.knock.example.test", "ns1.knock.example.test"]', '["a.b"]']),
    "addresses": st.sampled_from(['["192.0.2.53"]', '["2001:db8::53", "192.0.2.53"]', '[]', '["192.0.2.53", "192.0.2.53"]']),
})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=_dns_edits)
def test_any_dns_table_that_loads_serves(server: Path, edits: dict[str, str]) -> None:
    original = server.read_text()
    head, _, tail = original.partition("[carriers.dns]")
    body, sep, rest = tail.partition("\n[")
    kept = [line for line in body.split("\n") if line.split("=")[0].strip() not in edits]
    server.write_text(head + "[carriers.dns]" + "\n".join(kept)
                      + "".join(f"\n{k} = {v}" for k, v in edits.items()) + "\n" + sep + rest)
    try:
        try:
            config.load(server)
        except ConfigError as error:
            assert error.line is not None and error.option, error
            return
        runs(server)
    finally:
        server.write_text(original)


_secrets = st.one_of(
    st.integers(0, 40).map(lambda n: base64.b32encode(b"\x01" * n).decode()),
    st.integers(0, 40).map(lambda n: base64.b32encode(b"\x01" * n).decode().rstrip("=")),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ234567=abc01 ", max_size=40),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(totp=_secrets, emergency=_secrets, digits=st.sampled_from(["6", "8", "7", "10"]),
       count=st.sampled_from(["0", "1", "100", "101"]))
def test_any_otp_settings_that_load_serve(server: Path, totp: str, emergency: str, digits: str, count: str) -> None:
    path = server.parent / "keys" / "alice.toml"
    original = path.read_text()
    for option, value in (("totp_secret", f'"{totp}"'), ("emergency_secret", f'"{emergency}"'),
                          ("totp_digits", digits), ("emergency_count", count)):
        _set(path, option, value)
    try:
        try:
            keys.load_record(path, config.load(server).policy)
        except ConfigError as error:
            assert (error.path, error.option) == (str(path), error.option) and error.line is not None, error
            return
        runs(server)
    finally:
        path.write_text(original)


def test_knock_ports_the_capture_filter_cannot_hold_are_refused_at_load(server: Path) -> None:
    """Hundreds of fixed sequences: the kernel's 4096-instruction filter limit, met by spa check, not spa serve."""
    base = server.read_text()
    tables = []
    for index in range(650):
        ports = ", ".join(f'"{"tcp" if step % 2 else "udp"}/{1000 + (index * 8 + step) * 2}"' for step in range(8))
        tables.append(f'\n[sequences.s{index}]\nports = [{ports}]\nopen = ["tcp/22"]\n')
    server.write_text(base + "".join(tables))
    with pytest.raises(ConfigError, match="instructions") as caught:
        config.load(server)
    assert caught.value.option == "sequences.s649" and caught.value.line is not None
    server.write_text(base + "".join(tables[:50]))
    runs(server)  # fifty fit, and serve


@pytest.mark.parametrize("backend", ["iptables", "command"])
def test_single_use_grants_a_backend_cannot_make_are_refused_at_load(server: Path, backend: str) -> None:
    """These backends refused every single-use grant at grant time, logged one by one; now the loader says so."""
    text = server.read_text().replace('backend = "dry-run"', f'backend = "{backend}"\nstart_command = ["/bin/true"]', 1)
    server.write_text(text)
    config.load_keyring(config.load(server))  # without single use: fine
    server.write_text(text.replace("single_use = false", "single_use = true", 1))
    with pytest.raises(ConfigError, match="cannot do single-use") as caught:
        config.load(server)
    assert caught.value.option == "policy.single_use"
    server.write_text(text.replace('backend = "', 'single_use = ["tcp/22"]\nbackend = "', 1))
    with pytest.raises(ConfigError, match="cannot do single-use"):
        config.load(server)
    server.write_text(text)
    key = server.parent / "keys" / "alice.toml"
    key.write_text(re.sub(r"(?m)^\[policy\].*$", "[policy]\nsingle_use = true", key.read_text(), count=1)
                   if "[policy]" in key.read_text() else key.read_text() + "\n[policy]\nsingle_use = true\n")
    with pytest.raises(ConfigError, match="cannot do single-use") as caught:
        config.load_keyring(config.load(server))
    assert (caught.value.path, caught.value.option) == (str(key), "policy.single_use")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=_config_edits)
def test_any_config_that_loads_builds_the_worker_and_the_firewall_rules(
        server: Path, changes: list[tuple[str, str, str]]) -> None:
    """The whole of spa.toml, edited at random (test_config's strategy): what loads, runs."""
    original = server.read_text()
    text = original
    for table, option, value in changes:
        text, _ = _set_option(text, table, option, value)
    try:
        server.write_text(text)
        try:
            loaded = config.load(server)
            config.load_keyring(loaded)
        except ConfigError:
            return  # located: test_config checks that
        runs(server)
        compile_filter(wanted(loaded))
        nft_render.guard_script(loaded.firewall)
        nft_render.grant_script(loaded.firewall)
    finally:
        server.write_text(original)
