"""The shipped systemd unit: runs what the docs say, hardened, and valid to systemd."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from world.need import need  # noqa: E402

UNIT = Path(__file__).resolve().parents[2] / "docs" / "systemd" / "spa.service"


def _service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser["Service"]


def test_unit_serves_reloads_and_is_hardened() -> None:
    service = _service()
    assert service["ExecStart"].endswith("spa serve --config /etc/spa/spa.toml")
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    capabilities = set(service["CapabilityBoundingSet"].split())
    assert {"CAP_NET_ADMIN", "CAP_NET_RAW"} <= capabilities
    assert not capabilities & {"CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_SYS_MODULE", "CAP_BPF"}
    assert "AF_PACKET" in service["RestrictAddressFamilies"]


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    need(analyze is not None, "needs systemd-analyze (Debian package systemd)")
    spa = shutil.which("spa") or str(Path(sys.executable).with_name("spa"))
    copy = tmp_path / "spa.service"
    copy.write_text(UNIT.read_text().replace("/usr/local/bin/spa", spa))
    result = subprocess.run([str(analyze), "verify", str(copy)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if "spa.service" in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr
