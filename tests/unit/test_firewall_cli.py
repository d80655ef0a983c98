"""The firewall verbs' argument handling and output, without root."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

import pytest

from spa.cli import firewall_cmd
from spa.core.events import Request
from spa.errors import SpaError
from spa.firewall import LiveGrant

CMD = firewall_cmd


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="spa")
    CMD.register(parser.add_subparsers(dest="verb"))
    return parser.parse_args(list(argv))


def test_protect_and_backend_flags() -> None:
    settings = CMD.settings_from_args(
        parse("status", "--protect", "tcp/22, tcp/3389,udp/53", "--backend", "dry-run"))
    assert settings.backend == "dry-run"
    assert settings.protect == (Request("tcp", 22), Request("tcp", 3389), Request("udp", 53))


def test_settings_come_from_the_config_with_flags_overriding(tmp_path: Path) -> None:
    from spa.cli import main

    assert main(["init", "--dir", str(tmp_path), "--protect", "tcp/22,tcp/2222", "--backend", "dry-run"]) == 0
    config = str(tmp_path / "spa.toml")
    settings = CMD.settings_from_args(parse("status", "--config", config))
    assert settings.backend == "dry-run" and settings.protect == (Request("tcp", 22), Request("tcp", 2222))
    assert CMD.settings_from_args(parse("status", "--config", config, "--protect", "udp/53")).protect == (
        Request("udp", 53),
    )
    with pytest.raises(SpaError, match="no such file"):
        CMD.settings_from_args(parse("status", "--config", str(tmp_path / "missing.toml")))


def test_bad_protect_is_one_line_error() -> None:
    with pytest.raises(SpaError, match="--protect"):
        CMD.settings_from_args(parse("status", "--protect", "icmp/1"))


def test_install_output_writes_the_boot_file(tmp_path: Path) -> None:
    target = tmp_path / "nftables.d" / "spa-guard.nft"
    args = parse("firewall", "install", "--output", str(target), "--protect", "tcp/2222")
    assert args.func(args) == 0
    text = target.read_text()
    assert "table inet spa_guard {" in text and "6 . 2222" in text
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    assert "reject with tcp reset" in text  # stealth = "closed", the default


@pytest.mark.parametrize(("stealth", "refusal"), [("closed", "reject with tcp reset"), ("drop", "chain refuse {\n\t\tdrop\n")])
def test_the_boot_file_follows_the_configs_stealth(tmp_path: Path, stealth: str, refusal: str) -> None:
    from spa.cli import main

    assert main(["init", "--dir", str(tmp_path), "--protect", "tcp/22", "--backend", "dry-run"]) == 0
    config = tmp_path / "spa.toml"
    config.write_text(config.read_text().replace('stealth = "closed"', f'stealth = "{stealth}"', 1))
    target = tmp_path / "spa-guard.nft"
    args = parse("firewall", "install", "--config", str(config), "--output", str(target))
    assert args.func(args) == 0
    text = target.read_text()
    assert refusal in text and ("reject" in text) == (stealth == "closed")
    assert "@quiet jump refuse" in text  # the knock ports the config derives, refused the same way


def test_status_with_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse("status", "--backend", "dry-run")
    assert args.func(args) == 0
    assert capsys.readouterr().out == "no live grants\n"


def test_format_status_table() -> None:
    text = CMD.format_status([
        LiveGrant(ipaddress.ip_address("10.0.0.2"), Request("tcp", 22), 4.4, "alice"),
        LiveGrant(ipaddress.ip_address("fd00::2"), Request("tcp", 3389), 30, None, True),
    ])
    assert text.splitlines() == [
        "ADDRESS   PORT      LEFT  WHO",
        "10.0.0.2  tcp/22      4s  alice",
        "fd00::2   tcp/3389   30s  ? (single use)",
    ]
