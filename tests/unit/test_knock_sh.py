"""clients/knock.sh: the shell client builds the same tokens as the package.

Runs the script with ``-n`` (print the command, send nothing) and ``-t``
(fixed time) under every POSIX shell found here: docs/test-vectors.json
exactly, random keys against spa.client.tokens, and the refusals a person
meets (a key others can read, a missing -i, a port the key may not open).
No root and no network: ``-i`` or ``127.0.0.1`` everywhere.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spa.client import tokens
from spa.core.compact import Obfuscator, open_block
from spa.core.events import Request
from spa.core.keys import ClientKey, load_client_key

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from world.need import need  # noqa: E402 - skips locally, fails in CI

KNOCK = REPO / "clients" / "knock.sh"
VECTORS = json.loads((REPO / "docs" / "test-vectors.json").read_text())
ZONE = "knock.example.com"

# dash is Debian's /bin/sh and Termux's sh; busybox ash is OpenWrt's and
# Alpine's; bash --posix stands in for macOS's /bin/sh.
SHELLS = {"sh": ["sh"], "dash": ["dash"], "busybox": ["busybox", "sh"], "bash-posix": ["bash", "--posix"]}


def shell(name: str) -> list[str]:
    argv = SHELLS[name]
    if shutil.which(argv[0]) is None:
        need(False, f"needs {argv[0]} (scripts/setup.sh installs it)")
    return argv


def write_key(directory: Path, key: ClientKey, mode: int = 0o600, name: str = "") -> Path:
    path = directory / (name or f"{key.name}.spakey")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(key.render())
    os.chmod(path, mode)  # whatever the umask
    return path


def vector_key() -> ClientKey:
    keys = VECTORS["keys"]
    return ClientKey(
        name="alice",
        key_id=keys["key_id"],
        server="198.51.100.1",
        obfuscation_key=bytes.fromhex(keys["obfuscation_key"]),
        open=tuple(Request.parse(text) for text in keys["open"]),
        secret=bytes.fromhex(keys["secret"]),
        zone=ZONE,
    )


def knock(*argv: str, sh: list[str] | None = None, env: dict[str, str] | None = None,
          ok: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*(sh or ["sh"]), str(KNOCK), *argv], capture_output=True, text=True, timeout=30, check=False,
        env=env if env is not None else os.environ.copy(),
    )
    if ok:
        assert result.returncode == 0, result.stderr
    return result


def command(*argv: str, sh: list[str] | None = None, env: dict[str, str] | None = None) -> list[str]:
    """The command knock.sh would run (it prints it with -n)."""
    return shlex.split(knock("-n", *argv, sh=sh, env=env).stdout)


def queried_name(cmd: list[str]) -> str:
    """The name an nslookup or dig command asks for."""
    names = [word for word in cmd if word.endswith(f".{ZONE}.")]
    assert len(names) == 1, cmd
    return names[0]


def ping_pattern(cmd: list[str]) -> str:
    assert cmd[0] in ("ping", "ping6") and "-p" in cmd, cmd
    return cmd[cmd.index("-p") + 1]


@pytest.fixture(scope="module")
def vector_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_key(tmp_path_factory.mktemp("vectors"), vector_key())


# --- the published vectors, under every shell ------------------------------------------


@pytest.mark.parametrize("sh_name", sorted(SHELLS))
def test_compact_vectors(sh_name: str, vector_path: Path) -> None:
    sh = shell(sh_name)
    for entry in VECTORS["compact"]:
        address = entry["address"] or "none"
        host = "2001:db8::1" if ":" in address else "198.51.100.1"
        base = ["-k", str(vector_path), "-t", str(entry["time"]), "-o", entry["request"], "-i", address]
        assert command(*base, host, sh=sh) == ["ping", "-c", "2", "-p", entry["ping_pattern"], host]
        if entry["address"] is None:
            continue  # unbound: fine for ping, but -s is the only DNS way to use one (below)
        dns = command(*base, "-v", "dns", "-s", host, sh=sh)
        assert queried_name(dns) == f"{entry['dns_label']}.{ZONE}."
        assert host in dns or f"@{host}" in dns
    unbound = next(entry for entry in VECTORS["compact"] if entry["address"] is None)
    dns = command("-k", str(vector_path), "-t", str(unbound["time"]), "-i", "none", "-v", "dns", "-s", "192.0.2.53", sh=sh)
    assert queried_name(dns) == f"{unbound['dns_label']}.{ZONE}."


@pytest.mark.parametrize("sh_name", sorted(SHELLS))
def test_extended_vectors(sh_name: str, vector_path: Path) -> None:
    sh = shell(sh_name)
    for entry in VECTORS["extended"]:
        cmd = command("-k", str(vector_path), "-t", str(entry["time"]), "-v", "dns", "-i", entry["address"], sh=sh)
        assert len(cmd) == 2, "no server named: the system resolver is asked"
        assert queried_name(cmd) == f"{entry['dns_label']}.{ZONE}."


# --- random keys against the package ---------------------------------------------------

keys = st.builds(
    ClientKey,
    name=st.from_regex(r"[a-z][a-z0-9]{0,11}", fullmatch=True),
    key_id=st.integers(1, 0xFFFF),
    server=st.just("192.0.2.1"),
    obfuscation_key=st.binary(min_size=32, max_size=32),
    open=st.lists(st.builds(Request, st.sampled_from(["tcp", "udp"]), st.integers(1, 65535)),
                  min_size=1, max_size=4, unique=True).map(tuple),
    secret=st.binary(min_size=32, max_size=32),
    zone=st.sampled_from([ZONE]),
)
times = st.integers(0, 0xFFFFFFFF)
addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=keys, when=times, address=addresses, data=st.data())
def test_random_keys_match_the_package(tmp_path: Path, key: ClientKey, when: int, address: object, data: st.DataObject) -> None:
    assert isinstance(address, (ipaddress.IPv4Address, ipaddress.IPv6Address))
    request = data.draw(st.sampled_from(key.open))
    path = write_key(tmp_path, key, name="random.spakey")
    host = "2001:db8::1" if address.version == 6 else "192.0.2.1"
    base = ["-k", str(path), "-t", str(when), "-o", str(request), "-i", str(address)]

    compact = tokens.compact_token(key, when, address, request)
    assert ping_pattern(command(*base, host)) == tokens.ping_pattern(compact)
    assert queried_name(command(*base, "-v", "dns", "-s", host)) == tokens.dns_name(compact, ZONE)
    extended = tokens.extended_token(key, when, address, request)
    assert queried_name(command(*base, "-v", "dns")) == tokens.dns_name(extended, ZONE)


def test_default_time_is_now_and_default_port_is_default_open(tmp_path: Path) -> None:
    key = vector_key()
    key = ClientKey(**{**key.__dict__, "default_open": Request.parse("tcp/3389")})
    path = write_key(tmp_path, key)
    before = int(time.time())
    pattern = ping_pattern(command("-k", str(path), "-i", "192.0.2.7", "192.0.2.1"))
    after = int(time.time())
    opened = open_block(Obfuscator(key.obfuscation_key), bytes.fromhex(pattern))
    assert opened is not None
    fields, _ = opened
    assert before <= fields.time <= after
    assert fields.request_index == 1
    assert pattern == tokens.ping_pattern(tokens.compact_token(key, fields.time, ipaddress.ip_address("192.0.2.7")))


def test_without_i_binds_the_local_address_toward_the_host(vector_path: Path) -> None:
    need(shutil.which("ip") is not None, "needs iproute2's ip to find the local address")
    key = load_client_key(vector_path)
    loopback = ipaddress.ip_address("127.0.0.1")
    cmd = command("-k", str(vector_path), "-t", "1760000000", "127.0.0.1")
    assert ping_pattern(cmd) == tokens.ping_pattern(tokens.compact_token(key, 1760000000, loopback))
    dns = command("-k", str(vector_path), "-t", "1760000000", "-v", "dns", "-s", "127.0.0.1")
    assert queried_name(dns) == tokens.dns_name(tokens.compact_token(key, 1760000000, loopback), ZONE)


# --- where the key comes from, and refusals --------------------------------------------


def test_key_from_spa_key_or_the_config_directory(tmp_path: Path, vector_path: Path) -> None:
    expected = ["ping", "-c", "2", "-p", VECTORS["compact"][0]["ping_pattern"], "198.51.100.1"]
    argv = ["-t", "1760000000", "-i", "198.51.100.7"]
    env = {key: value for key, value in os.environ.items() if key not in ("SPA_KEY", "XDG_CONFIG_HOME")}
    assert command(*argv, env={**env, "SPA_KEY": str(vector_path)}) == expected

    home = tmp_path / "home"
    config = home / ".config" / "spa"
    config.mkdir(parents=True)
    env["HOME"] = str(home)
    missing = knock(*argv, env=env, ok=False)
    assert missing.returncode != 0 and "no key file" in missing.stderr
    write_key(config, vector_key(), name="office.spakey")
    assert command(*argv, env=env) == expected  # the key's server is the default HOST
    write_key(config, vector_key(), name="home.spakey")
    several = knock(*argv, env=env, ok=False)
    assert several.returncode != 0 and "-k" in several.stderr


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_refuses_a_key_others_can_read(tmp_path: Path, mode: int) -> None:
    path = write_key(tmp_path, vector_key(), mode=mode)
    result = knock("-n", "-k", str(path), "-i", "192.0.2.7", "192.0.2.1", sh=shell("dash"), ok=False)
    assert result.returncode != 0
    assert f"chmod 600 {path}" in result.stderr
    assert result.stdout == ""


def test_the_key_file_is_data_not_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    text = vector_key().render()
    for option, value in (("name", "alice"), ("server", "198.51.100.1"), ("zone", ZONE)):
        path = tmp_path / f"{option}.spakey"
        path.write_text(text.replace(f'{option} = "{value}"', f'{option} = "$(touch {marker})"'))
        path.chmod(0o600)
        result = knock("-n", "-k", str(path), "-i", "192.0.2.7", ok=False)
        assert result.returncode != 0, option
        assert option in result.stderr
    assert not marker.exists()


def test_key_file_syntax_a_person_may_write(tmp_path: Path) -> None:
    """Comments, single quotes, CRLF line ends, upper-case hex, spaces in the port list."""
    text = vector_key().render()
    text = text.replace('name = "alice"', "name='alice'   # me")
    text = text.replace("key_id = 7", "key_id = 7  # my id")
    text = text.replace('open = "tcp/22,tcp/3389"', 'open = " TCP/22 , tcp/3389 "')
    keys_ = VECTORS["keys"]
    text = text.replace(keys_["secret"], keys_["secret"].upper())
    path = tmp_path / "odd.spakey"
    path.write_bytes(text.replace("\n", "\r\n").encode())
    path.chmod(0o600)
    entry = VECTORS["compact"][0]
    cmd = command("-k", str(path), "-t", "1760000000", "-i", entry["address"], "-o", "22", "198.51.100.1")
    assert ping_pattern(cmd) == entry["ping_pattern"]


def test_ed25519_only_keys_are_sent_to_the_python_client(tmp_path: Path) -> None:
    key = ClientKey(**{**vector_key().__dict__, "secret": None, "signing_key": bytes(range(32))})
    path = write_key(tmp_path, key)
    result = knock("-n", "-k", str(path), "-i", "192.0.2.7", ok=False)
    assert result.returncode != 0 and "UDP" in result.stderr


@pytest.mark.parametrize(("argv", "says"), [
    (["-v", "dns", "-t", "1"], "-i ADDRESS"),                 # through a resolver, the token must name the address
    (["-v", "dns", "-i", "none", "-t", "1"], "-i ADDRESS"),  # an unbound token would open the resolver
    (["-o", "tcp/80", "-i", "192.0.2.7"], "may open tcp/22,tcp/3389"),
    (["-i", "192.0.2", "-t", "1"], "-i 192.0.2"),
    (["-i", "::1", "-t", "1", "192.0.2.1"], "family"),
    (["-t", "01", "-i", "192.0.2.7"], "Unix seconds"),
    (["-t", "4294967296", "-i", "192.0.2.7"], "Unix seconds"),
    (["-v", "udp", "-i", "192.0.2.7"], "dns or icmp"),
    (["-v", "dns", "-i", "192.0.2.7", "192.0.2.1"], "-s SERVER"),
    (["-i", "192.0.2.7", "$(reboot)"], "not an address"),
    (["-v", "dns", "-i", "::ffff:192.0.2.7", "-t", "1"], "-i ::ffff:192.0.2.7"),  # IPv4-mapped: servers refuse it
    (["-v", "dns", "-i", "::ffff:c000:207", "-t", "1"], "-i ::ffff:c000:207"),
])
def test_refusals(vector_path: Path, argv: list[str], says: str) -> None:
    result = knock("-n", "-k", str(vector_path), *argv, ok=False)
    assert result.returncode != 0
    assert says in result.stderr
    assert result.stdout == ""


def test_needs_only_posix_tools_and_openssl(tmp_path: Path, vector_path: Path) -> None:
    """A PATH holding only what docs/clients-shell.md lists (dig, no nslookup): no
    xxd, no base32, no stat, no bash. With neither nslookup nor dig, -n still prints."""
    tools = ["sh", "openssl", "awk", "sed", "od", "tr", "cut", "ls", "date", "uname", "cat"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dig", *tools):
        found = shutil.which(tool)
        need(found is not None, f"needs {tool}")
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path)}
    entry = VECTORS["extended"][0]
    base = ["-k", str(vector_path), "-t", "1760000000", "-i", entry["address"]]
    assert command(*base, "-v", "dns", "-s", "198.51.100.1", env=env)[:2] == ["dig", "@198.51.100.1"]
    assert command(*base, "-v", "dns", env=env) == ["dig", f"{entry['dns_label']}.{ZONE}."]
    assert ping_pattern(command(*base, "198.51.100.1", env=env)) == VECTORS["compact"][0]["ping_pattern"]
    (bin_dir / "dig").unlink()
    assert command(*base, "-v", "dns", env=env) == ["nslookup", f"{entry['dns_label']}.{ZONE}."]
    refused = knock(*base, "-v", "dns", env=env, ok=False)
    assert refused.returncode != 0 and "nslookup or dig" in refused.stderr


def test_refuses_busybox_ping(tmp_path: Path, vector_path: Path) -> None:
    """BusyBox's ping -p sends one byte of the pattern: no knock, so say so."""
    fake = tmp_path / "busybox"
    ran = tmp_path / "ran"
    fake.write_text(f"#!/bin/sh\ntouch {ran}\n")
    fake.chmod(0o755)
    (tmp_path / "ping").symlink_to(fake)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    result = knock("-k", str(vector_path), "-i", "192.0.2.7", "192.0.2.1", env=env, ok=False)
    assert result.returncode != 0 and "BusyBox" in result.stderr
    assert not ran.exists()


def test_shellcheck_is_clean() -> None:
    need(shutil.which("shellcheck") is not None, "needs shellcheck (scripts/setup.sh installs it)")
    result = subprocess.run(["shellcheck", "-s", "sh", str(KNOCK)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout

