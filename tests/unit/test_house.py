"""Checks that keep the house standing: types, lint, and the layers' imports.

They run inside the test suite (so `.ci/run`, which runs the README's test
command, runs them too): mypy, strict on spa.core, spa.config and spa.daemon and plain
on the rest; ruff on spa and the tests (pyproject.toml says which rules);
and import contracts read from the source with ``ast``, so a module that
reaches across a layer fails here, not in a review.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPA = ROOT / "spa"
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed in {BIN} (scripts/setup.sh installs it)")
        pytest.skip(f"{name} not installed")
    return str(path)


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


def test_types_strict_in_the_core_the_config_and_the_daemon() -> None:
    result = run([tool("mypy"), "--strict", "spa/core", "spa/config.py", "spa/daemon"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_types_everywhere_else() -> None:
    result = run([tool("mypy"), "spa"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_lint() -> None:
    result = run([tool("ruff"), "check", "spa", "tests"])
    assert result.returncode == 0, result.stdout + result.stderr


# -- import contracts ------------------------------------------------------------------------


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The spa modules ``path`` imports, at any depth of the file (lazy imports count)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                stem = ".".join([*base, node.module] if node.module else base)
            else:
                stem = node.module or ""
            found.add(stem)
            found.update(f"{stem}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "spa" or name.startswith("spa.")}


MODULES = {module_name(path): path for path in SPA.rglob("*.py")}


def known(name: str) -> str | None:
    """The module ``name`` refers to (``spa.core.otp``, or a package's ``__init__``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def closure(start: str) -> set[str]:
    """Every spa module ``start`` imports, directly or through others.

    A parent package's ``__init__`` that Python runs on the way is not
    followed: ``spa.firewall``'s imports its backends lazily, inside
    ``open_backend``, which only the supervisor calls. (Issue 14 takes the
    settings out of ``spa.firewall``; then the worker needs nothing of it.)
    """
    seen: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(m for m in (known(i) for i in imports(MODULES[name])) if m is not None)
    return seen - {start}


def within(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def test_the_core_imports_nothing_above_it() -> None:
    for name, path in MODULES.items():
        if within(name, "spa.core"):
            above = {i for i in imports(path) if not within(i, "spa.core", "spa.errors") and i != "spa"}
            assert not above, f"{name} imports {sorted(above)}"


def test_the_configuration_layer_sits_below_the_processes() -> None:
    # spa.config assembles the core's, carriers', firewall's and intake's settings; the daemon and
    # the command line read it, never the other way round.
    wrong = {i for i in imports(MODULES["spa.config"]) if within(i, "spa.daemon", "spa.cli", "spa.client", "spa.demo")}
    assert not wrong, f"spa.config imports {sorted(wrong)}"


def test_the_worker_cannot_reach_a_firewall_backend() -> None:
    # Settings are plain data the worker's Config carries; every module that can change a ruleset is out of reach.
    reach = closure("spa.daemon.worker")
    backends = {m for m in reach if within(m, "spa.firewall") and m not in ("spa.firewall.settings",)}
    # spa.firewall (the package) is reached only if something imports it: that is a backend factory too.
    assert not backends, f"the worker reaches {sorted(backends)}"


def test_the_firewall_knows_nothing_of_packets_or_processes() -> None:
    for name, path in MODULES.items():
        if within(name, "spa.firewall"):
            wrong = {i for i in imports(path) if within(i, "spa.carriers", "spa.intake", "spa.daemon", "spa.cli",
                                                         "spa.client", "spa.demo")}
            assert not wrong, f"{name} imports {sorted(wrong)}"


def test_packet_parsers_do_not_touch_the_firewall() -> None:
    for name, path in MODULES.items():
        if within(name, "spa.carriers", "spa.intake"):
            wrong = {i for i in imports(path) if within(i, "spa.firewall", "spa.daemon", "spa.cli")}
            assert not wrong, f"{name} imports {sorted(wrong)}"


def test_the_contract_reader_sees_imports() -> None:
    # So the contracts above cannot pass by reading nothing.
    assert "spa.core.gate" in closure("spa.daemon.worker")
    assert known("spa.firewall.nftables") in closure("spa.daemon.supervisor")
