"""Key names fit every code label: name-<10 digits>-<longest IPv6> is 63 characters at most."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest

from spa.core import keys, otp
from spa.errors import ConfigError

LONGEST_IPV6 = ipaddress.ip_address("fd12:3456:789a:bcde:f012:3456:789a:bcde")


def test_the_longest_name_makes_the_longest_label_fit_exactly() -> None:
    name = "a" * otp.MAX_NAME
    assert keys.valid_name(name) and not keys.valid_name(name + "a")
    assert len(otp.to_label(name, "1234567890", LONGEST_IPV6)) == 63
    with pytest.raises(ValueError, match="63"):
        otp.to_label(name + "a", "1234567890", LONGEST_IPV6)


def test_the_key_store_refuses_a_name_too_long_for_a_label(tmp_path: Path) -> None:
    path = tmp_path / "abcdefghijklm.toml"
    path.write_text(f'name = "abcdefghijklm"\nkey_id = 3\nsecret = "{"ab" * 32}"\n\n[policy]\nopen = ["tcp/22"]\n')
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="1-12"):
        keys.load_record(path, None)


def test_keygen_refuses_a_name_too_long_for_a_label(tmp_path: Path) -> None:
    spa = [sys.executable, "-m", "spa"]
    made = subprocess.run([*spa, "init", "--dir", str(tmp_path), "--protect", "tcp/22", "--backend", "dry-run"],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    config = str(tmp_path / "spa.toml")
    refused = subprocess.run([*spa, "keygen", "abcdefghijklm", "--config", config, "--server", "192.0.2.1",
                              "--out", str(tmp_path / "x.spakey")], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "1-12" in refused.stderr and "Traceback" not in refused.stderr
    fits = subprocess.run([*spa, "keygen", "abcdefghijkl", "--config", config, "--server", "192.0.2.1",
                           "--out", str(tmp_path / "y.spakey")], capture_output=True, text=True, timeout=60)
    assert fits.returncode == 0, fits.stderr
