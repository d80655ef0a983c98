"""Config and key files: what loads, and errors that name file, line and option."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from spa import config
from spa.cli import main
from spa.core import keys
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
    assert loaded.firewall.stealth == "closed"
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
        ('stealth = "closed"', 'stealth = "reject"', "firewall.stealth", "stealth must be one of 'closed', 'drop'"),
        ('stealth = "closed"', "stealth = true", "firewall.stealth", "not True"),
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


def test_only_keys_enrolled_for_codes_admit_them(server: Path) -> None:
    _keygen(server, "alice", "--totp")
    _keygen(server, "carol", "--emergency", "3")
    _keygen(server, "bob")
    keyring = config.load_keyring(config.load(server))
    assert keyring.by_name["alice"].record.policy.allow_codes
    assert keyring.by_name["carol"].record.policy.allow_codes
    assert not keyring.by_name["bob"].record.policy.allow_codes
    assert "allow_codes = true" in (server.parent / "keys" / "alice.toml").read_text()


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
    assert f"{server}: OK" in out and "alice" in out and "secret+totp" in out and "refused" not in out


def test_check_says_when_a_key_with_codes_cannot_use_them(server: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _keygen(server, "alice", "--totp")
    _edit(server.parent / "keys" / "alice.toml", "allow_codes = true", "allow_codes = false")
    capsys.readouterr()
    assert main(["check", "--config", str(server)]) == 0
    assert "totp (refused: no allow_codes)" in capsys.readouterr().out


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


# -- properties: any text, any value gives a Config or an error that says where ----------------

import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
from dataclasses import fields as dataclass_fields  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from spa.core import tomlfile  # noqa: E402
from spa.core.policy import POLICY_OPTIONS  # noqa: E402
from spa.errors import SpaError  # noqa: E402
from spa.firewall.settings import FirewallSettings  # noqa: E402


def _toml_float(value: float) -> str:
    if math.isnan(value):
        return "nan"
    return ("-inf" if value < 0 else "inf") if math.isinf(value) else repr(value)


# TOML values as text: JSON string escapes are TOML basic-string escapes (a lone
# surrogate's \ud800 is not, which makes a syntax error: also a case worth having).
_scalars = st.one_of(
    st.booleans().map(lambda b: "true" if b else "false"),
    st.integers(-(2**63), 2**63 - 1).map(str),
    st.floats().map(_toml_float),
    st.text(max_size=24).map(json.dumps),
    st.sampled_from(['"tcp/22"', '"udp/53"', '"tcp/3389"', '"tcp/0"', '"0.0.0.0/0"', '"::/0"', '"fe80::1%eth0"',
                     '"20000-59999"', '"1-2"', '"knock.example.test"', '"nftables"', '"dns"', '"sniff"', '""',
                     '"closed"', '"drop"']),
)
toml_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda items: "[" + ", ".join(items) + "]"),
        st.dictionaries(st.sampled_from(["a", "open", "port"]), inner, max_size=2).map(
            lambda table: "{" + ", ".join(f"{k} = {v}" for k, v in table.items()) + "}"),
    ),
    max_leaves=6,
)

TABLE_OPTIONS: dict[str, tuple[str, ...]] = {
    "server": config.SERVER_OPTIONS,
    "policy": POLICY_OPTIONS,
    "limits": config.LIMIT_OPTIONS,
    "otp": config.OTP_OPTIONS,
    "firewall": tuple(f.name for f in dataclass_fields(FirewallSettings)),
    **{f"carriers.{name}": options for name, options in config.CARRIER_OPTIONS.items()},
    "sequences.door": config.STATIC_OPTIONS + POLICY_OPTIONS,
}
edits = st.lists(
    st.sampled_from(sorted(TABLE_OPTIONS)).flatmap(
        lambda table: st.tuples(st.just(table), st.sampled_from(TABLE_OPTIONS[table] + ("colour",)), toml_values)),
    min_size=1, max_size=3,
)


def _set_option(text: str, table: str, option: str, value: str) -> tuple[str, int]:
    """Set ``option`` in ``[table]`` to ``value`` (replacing its line, or adding one); the text and its line."""
    lines = text.split("\n")
    header = f"[{table}]"
    start = next((i for i, line in enumerate(lines) if line.split("#")[0].strip() == header), None)
    if start is None:
        lines += ["", header]
        start = len(lines) - 1
    end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
    for i in range(start + 1, end):
        if re.match(rf"^{re.escape(option)}\s*=", lines[i]):
            lines[i] = f"{option} = {value}"
            return "\n".join(lines), i + 1
    lines.insert(start + 1, f"{option} = {value}")
    return "\n".join(lines), start + 2


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("template")
    assert main(["init", "--dir", str(base / "srv"), "--protect", "tcp/22,tcp/3389",
                 "--zone", "knock.example.test", "--backend", "dry-run"]) == 0
    assert main(["keygen", "alice", "--config", str(base / "srv" / "spa.toml"), "--server", "192.0.2.1",
                 "--out", str(base / "alice.spakey"), "--totp", "--emergency", "2"]) == 0
    return base


def _located(error: ConfigError, path: Path, text: str) -> None:
    """The error names this file and a line in it; a value error also names the option."""
    assert error.path == str(path), error
    assert error.line is not None and 1 <= error.line <= text.count("\n") + 1, error
    assert str(error).startswith(f"{path}:{error.line}: "), error
    if error.option is not None:
        assert str(error).startswith(f"{path}:{error.line}: {error.option}: "), error


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits)
def test_any_option_values_give_a_config_or_an_error_naming_file_line_and_option(
    template: Path, changes: list[tuple[str, str, str]]
) -> None:
    path = template / "srv" / "spa.toml"
    original = path.read_text()
    text = original
    where: dict[str, int] = {}
    for table, option, value in changes:
        text, line = _set_option(text, table, option, value)
        where[f"{table}.{option}"] = line
    try:
        path.write_text(text)
        loaded = config.load(path)
    except ConfigError as error:
        _located(error, path, text)
        if error.option is not None:
            assert error.option.split(".")[0] in config.SECTIONS, error
        if error.option in where and len(changes) == 1:
            assert error.line == where[error.option], (error, text)
    else:
        assert isinstance(loaded, config.Config)
    finally:
        path.write_text(original)


KEY_OPTIONS = ("name", "key_id", "secret", "public_key", "totp_secret", "totp_digits", "emergency_secret",
               "emergency_count", "colour")


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(KEY_OPTIONS + tuple(f"policy.{o}" for o in POLICY_OPTIONS)), toml_values)
def test_any_key_store_values_give_a_record_or_a_located_error(template: Path, option: str, value: str) -> None:
    path = template / "srv" / "keys" / "alice.toml"
    original = path.read_text()
    table, _, name = option.rpartition(".")
    if table:
        text, _ = _set_option(original, table, name, value)
    else:
        lines = original.split("\n")
        index = next((i for i, line in enumerate(lines) if line.startswith(f"{name} =")), 1)
        lines[index:index + (lines[index].startswith(f"{name} =") and 1)] = [f"{name} = {value}"]
        text = "\n".join(lines)
    try:
        path.write_text(text)
        record = keys.load_record(path, config.load(template / "srv" / "spa.toml").policy)
    except ConfigError as error:
        _located(error, path, text)
    else:
        assert isinstance(record, keys.KeyRecord)
    finally:
        path.write_text(original)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(("format", "name", "key_id", "server", "zone", "udp_port", "open", "default_open",
                        "obfuscation_key", "secret", "signing_key", "colour")), toml_values)
def test_any_client_key_values_give_a_key_or_a_located_error(template: Path, option: str, value: str) -> None:
    path = template / "alice.spakey"
    original = path.read_text()
    lines = [line for line in original.split("\n") if not line.startswith(f"{option} =")]
    text = "\n".join([*lines[:2], f"{option} = {value}", *lines[2:]])
    try:
        path.write_text(text)
        key = keys.load_client_key(path)
    except ConfigError as error:
        _located(error, path, text)
    else:
        assert isinstance(key, keys.ClientKey)
    finally:
        path.write_text(original)


_toml_lines = st.one_of(
    st.sampled_from(["[server]", "[policy]", "[[policy]]", "[carriers.dns]", "[sequences.a]", "[ firewall ]",
                     "a = 1", 'open = ["tcp/22"]', 'x = """', '"""', "# note", "[", "]", "k = [", "1,", "]",
                     "'q' = 2", '"a.b" = 3', "a.b = 4", "t = {a = 1}", "\r", "s = 'x' # c"]),
    st.text(max_size=20),
)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=200), st.lists(_toml_lines, max_size=12).map("\n".join)))
def test_toml_reader_gives_a_document_or_an_error_with_its_line(text: str) -> None:
    try:
        doc = tomlfile.parse(text, "spa.toml")
    except ConfigError as error:
        assert error.path == "spa.toml" and error.option is None
        assert error.line is None or 1 <= error.line <= text.count("\n") + 1, error
        return
    lines = text.split("\n")
    for option, line in doc.lines.items():
        # Every remembered line is in the file, and holds that option or table's last name.
        assert 1 <= line <= len(lines), (option, line)
        assert option[-1].isdigit() or option[-1] in lines[line - 1], (option, line, lines[line - 1])


def test_line_numbers_count_only_newlines(tmp_path: Path) -> None:
    # Regression: lines were counted with str.splitlines, which also breaks at
    # U+2028, form feeds and the like; tomllib (and editors) count only \n.
    text = '[server]\nuser = "nobody" # a\u2028b\ntime_window = 0\n'
    path = tmp_path / "spa.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert (caught.value.line, caught.value.option) == (3, "server.time_window")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_as_a_config_file_give_a_located_error(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("bytes") / "spa.toml"
    path.write_bytes(data)
    with pytest.raises(SpaError) as caught:
        config.load(path)
    assert isinstance(caught.value, ConfigError) and caught.value.path == str(path)


def test_the_key_file_carries_the_servers_sequence_settings(server: Path) -> None:
    """A client that assumed the default sequence rule knocked ports a server
    with other [otp] settings never watched (issue 14)."""
    from spa.client import tokens
    from spa.core.gate import Gate
    from spa.core.ledger import Ledger

    _edit(server, "sequence_length = 3", "sequence_length = 4")
    _edit(server, 'sequence_ports = "20000-59999"', 'sequence_ports = "30000-39999"')
    _edit(server, "sequence_step = 30", "sequence_step = 60")
    client = keys.load_client_key(_keygen(server, "alice"))
    loaded = config.load(server)
    assert client.sequence == loaded.gate.sequence
    gate = Gate(config.load_keyring(loaded), Ledger(700), loaded.gate)
    now = 1_760_000_000
    ports = tokens.otp_sequence(client, now, client.sequence)
    assert len(ports) == 4 and all(30000 <= p <= 39999 for p in ports)
    assert ports in gate.sequences(now), "the client's sequence is not one the server watches"


def test_an_older_key_file_without_sequence_settings_gets_the_defaults(server: Path) -> None:
    from spa.core.sequence import SequenceRule

    path = _keygen(server, "alice")
    text = "".join(line + "\n" for line in path.read_text().splitlines() if not line.startswith("sequence_"))
    path.write_text(text)
    assert keys.load_client_key(path).sequence == SequenceRule()
    path.write_text(text + 'sequence_ports = "2²-3"\n')
    with pytest.raises(ConfigError, match="sequence_ports"):
        keys.load_client_key(path)
