"""Config and key files: what loads, and errors that name file, line and option."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from spa.cli import main
from spa.core import config, keys
from spa.errors import ConfigError, KeyFileError


@pytest.fixture
def server(tmp_path: Path) -> Path:
    assert main(["init", "--dir", str(tmp_path / "srv"), "--protect", "tcp/22,tcp/3389",
                 "--zone", "knock.example.test", "--backend", "dry-run"]) == 0
    return tmp_path / "srv" / "spa.toml"


def test_init_writes_a_config_that_loads(server: Path) -> None:
    loaded = config.load(server)
    assert [str(r) for r in loaded.firewall.protect] == ["tcp/22", "tcp/3389"]
    assert loaded.dns is not None and loaded.dns.zone == "knock.example.test"
    assert loaded.carriers == ("icmp", "dns", "udp", "sequence")
    # Knock ports are dropped by the guard without being configured there.
    assert loaded.firewall.quiet == (("tcp", 20000, 59999), ("udp", 20000, 59999), ("udp", 62201, 62201))
    assert loaded.gate.time_window == 60 and loaded.keys_dir.is_dir()
    assert oct(os.stat(loaded.secret_file).st_mode & 0o777) == "0o600"


def _edit(path: Path, old: str, new: str) -> int:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return text[: text.index(old)].count("\n") + 1


@pytest.mark.parametrize(
    "old,new,option,message",
    [
        ("time_window = 60", "time_window = 0", "server.time_window", "whole number from 1 to 3600"),
        ("time_window = 60", "time_windw = 60", "server.time_windw", "unknown option"),
        ("seconds = 30 ", "seconds = \"30\" ", "policy.seconds", "positive whole number"),
        ('protect = ["tcp/22", "tcp/3389"]', 'protect = ["tcp/70000"]', "firewall.protect", "port must be 1-65535"),
        ('backend = "dry-run"', 'backend = "pf"', "firewall.backend", "expected one of"),
        ('sequence_ports = "20000-59999"', 'sequence_ports = "20000"', "otp.sequence_ports", "range"),
        ('carriers = ["icmp", "dns", "udp", "sequence"]', 'carriers = ["smoke"]', "policy.carriers", "not a valid"),
        ('sources = ["0.0.0.0/0", "::/0"]', 'sources = ["10.0.0.0/33"]', "policy.sources", "10.0.0.0/33"),
    ],
)
def test_errors_name_file_line_and_option(server: Path, old: str, new: str, option: str, message: str) -> None:
    line = _edit(server, old, new)
    with pytest.raises(ConfigError) as caught:
        config.load(server)
    error = caught.value
    assert (error.path, error.line, error.option) == (str(server), line, option)
    assert message in str(error) and str(error).startswith(f"{server}:{line}: {option}: ")


def test_syntax_error_names_the_line(server: Path) -> None:
    line = _edit(server, "seconds = 30 ", "seconds = = 30 ")
    with pytest.raises(ConfigError) as caught:
        config.load(server)
    assert caught.value.line == line


def test_policy_must_open_only_protected_ports(server: Path) -> None:
    _edit(server, 'open = ["tcp/22", "tcp/3389"]', 'open = ["tcp/8080"]')
    with pytest.raises(ConfigError, match="tcp/8080 is not in firewall.protect"):
        config.load(server)


def test_missing_file_and_unknown_section(server: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        config.load(tmp_path / "nope.toml")
    server.write_text(server.read_text() + "\n[extra]\n")
    with pytest.raises(ConfigError, match="extra: unknown section"):
        config.load(server)


def _keygen(server: Path, name: str, *extra: str) -> Path:
    out = server.parent.parent / f"{name}.spakey"
    assert main(["keygen", name, "--config", str(server), "--server", "192.0.2.1", "--out", str(out), *extra]) == 0
    return out


def test_keygen_writes_matching_client_and_server_keys(server: Path) -> None:
    client_path = _keygen(server, "alice", "--open", "tcp/3389,tcp/22", "--totp", "--emergency", "2")
    loaded = config.load(server)
    keyring = config.load_keyring(loaded)
    client = keys.load_client_key(client_path)
    entry = keyring.by_name["alice"]
    assert client.key_id == entry.record.key_id == 1
    assert client.secret == entry.record.secret and client.open == entry.record.policy.open
    assert client.obfuscation_key == config.read_server_secret(loaded.secret_file)
    assert client.zone == "knock.example.test" and entry.record.totp_secret and len(entry.emergency) == 2
    assert oct(os.stat(client_path).st_mode & 0o777) == "0o600"


def test_ed25519_key_leaves_no_secret_on_the_server(server: Path) -> None:
    client_path = _keygen(server, "bob", "--ed25519")
    record = config.load_keyring(config.load(server)).by_name["bob"].record
    assert record.secret is None and record.public_key is not None
    assert keys.load_client_key(client_path).signing_key is not None


def test_key_store_errors_are_located(server: Path) -> None:
    _keygen(server, "alice")
    path = server.parent / "keys" / "alice.toml"
    line = _edit(path, "key_id = 1", "key_id = 0")
    with pytest.raises(ConfigError) as caught:
        config.load_keyring(config.load(server))
    assert (caught.value.path, caught.value.line, caught.value.option) == (str(path), line, "key_id")


def test_duplicate_key_ids_are_refused(server: Path) -> None:
    _keygen(server, "alice")
    _keygen(server, "bob")
    _edit(server.parent / "keys" / "bob.toml", "key_id = 2", "key_id = 1")
    with pytest.raises(ConfigError, match="also used by"):
        config.load_keyring(config.load(server))


def test_group_readable_key_files_are_refused_with_the_fix(server: Path) -> None:
    client_path = _keygen(server, "alice")
    os.chmod(client_path, 0o640)
    with pytest.raises(KeyFileError, match=rf"mode 0640.*chmod 600 {client_path}"):
        keys.load_client_key(client_path)
    os.chmod(server.parent / "keys" / "alice.toml", 0o644)
    with pytest.raises(KeyFileError, match="readable by group or others"):
        config.load_keyring(config.load(server))


def test_revoke_removes_the_key_from_the_next_load(server: Path) -> None:
    _keygen(server, "alice")
    assert "alice" in config.load_keyring(config.load(server)).by_name
    assert main(["revoke", "alice", "--config", str(server)]) == 0
    assert "alice" not in config.load_keyring(config.load(server)).by_name


def test_cli_errors_are_one_line_and_non_zero(server: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _keygen(server, "alice")
    cases = [
        ["keygen", "alice", "--config", str(server), "--server", "x"],
        ["keygen", "Alice!", "--config", str(server), "--server", "x"],
        ["keygen", "carol", "--config", str(server), "--server", "x", "--open", "tcp/8080"],
        ["revoke", "nobody", "--config", str(server)],
        ["check", "--config", str(server.parent / "missing.toml")],
    ]
    for argv in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith("spa: ") and err.count("\n") == 1, err


def test_check_summarises(server: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _keygen(server, "alice", "--totp")
    capsys.readouterr()
    assert main(["check", "--config", str(server)]) == 0
    out = capsys.readouterr().out
    assert f"{server}: OK" in out and "alice" in out and "secret+totp" in out


def test_the_example_key_in_the_checkout_is_the_test_vector_key(tmp_path: Path) -> None:
    import shutil

    import vectors

    copy = tmp_path / "alice.spakey"
    shutil.copy(Path(vectors.PATH).parents[1] / "keys" / "example-alice.spakey", copy)
    os.chmod(copy, 0o600)
    key = keys.load_client_key(copy)
    assert key.secret == vectors.SECRET and key.obfuscation_key == vectors.OBFUSCATION_KEY
    assert key.key_id == vectors.KEY_ID and [str(r) for r in key.open] == vectors.OPEN


def test_firewall_table_maps_onto_firewall_settings(server: Path) -> None:
    line = _edit(server, 'backend = "dry-run"', 'backend = "dry-run"\nsingle_use = ["tcp/22"]\nmark = 4096')
    loaded = config.load(server).firewall
    assert loaded.backend == "dry-run" and loaded.mark == 4096 and [str(r) for r in loaded.single_use] == ["tcp/22"]
    _edit(server, "mark = 4096", "grant_table = 7")
    with pytest.raises(ConfigError) as caught:
        config.load(server)
    assert (caught.value.line, caught.value.option) == (line + 2, "firewall.grant_table")
    _edit(server, "grant_table = 7", 'guard_table = "spa_grant"')
    with pytest.raises(ConfigError, match="guard_table and grant_table must differ"):
        config.load(server)


@pytest.mark.parametrize(
    "old,new,option,message",
    [
        ('zone = "knock.example.test"', 'zone = "knock..test"', "carriers.dns.zone", "not a domain name"),
        ('mode = "serve"', 'mode = "proxy"', "carriers.dns.mode", "sniff"),
        ('sequence_ports = "20000-59999"', 'sequence_ports = "10-100"', "carriers", "collides with firewall.protect"),
        ("silence_replies = false", "silence_replies = 1", "carriers.icmp.silence_replies", "true or false"),
        ('user = "nobody"', 'user = "Root Admin"', "server.user", "user name"),
    ],
)
def test_carrier_errors_name_file_line_and_option(server: Path, old: str, new: str, option: str, message: str) -> None:
    _edit(server, old, new)
    with pytest.raises(ConfigError) as caught:
        config.load(server)
    assert caught.value.option == option and message in str(caught.value)


def test_fixed_sequences_load_with_policy_and_quiet_ports(server: Path) -> None:
    server.write_text(server.read_text() + (
        '\n[sequences.office]\nports = ["tcp/7000", "udp/8000", "tcp/9000"]\ntimeout = 3\n'
        'open = ["tcp/3389"]\nseconds = 15\n'
    ))
    loaded = config.load(server)
    (office,) = loaded.statics
    assert [str(s) for s in office.steps] == ["tcp/7000", "udp/8000", "tcp/9000"]
    assert office.timeout == 3 and office.policy.seconds == 15 and [str(r) for r in office.policy.open] == ["tcp/3389"]
    assert {("tcp", 7000, 7000), ("udp", 8000, 8000), ("tcp", 9000, 9000)} <= set(loaded.firewall.quiet)
    assert config.load_keyring(loaded).statics["office"] == office


@pytest.mark.parametrize(
    "table,option,message",
    [
        ('ports = ["tcp/7000", "tcp/7000"]', "sequences.bad.ports", "follow itself"),
        ('ports = ["tcp/7000"]\nopen = ["tcp/8080"]', "sequences.bad.open", "not in firewall.protect"),
        ('ports = ["tcp/7000"]\ncolour = "red"', "sequences.bad.colour", "unknown option"),
        ('ports = "7000"', "sequences.bad.ports", "expected a list"),
    ],
)
def test_fixed_sequence_errors(server: Path, table: str, option: str, message: str) -> None:
    server.write_text(server.read_text() + f"\n[sequences.bad]\n{table}\n")
    with pytest.raises(ConfigError) as caught:
        config.load(server)
    assert caught.value.option == option and message in str(caught.value)
