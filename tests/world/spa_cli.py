"""Run the ``spa`` command line inside a namespace, as a person would.

Uses ``spa.cli.main``. While the other verb modules of spa.cli are still
being written (spa.cli imports them all), fall back to a parser holding only
the firewall verbs, dispatched the same way (SpaError -> one line, exit 1).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_firewall_cmd() -> ModuleType:
    """spa/cli/firewall_cmd.py loaded by path, without running spa/cli/__init__.py
    (which imports verb modules that may not exist yet). It only uses absolute
    imports, so this is the same code the real ``spa`` command runs."""
    import spa

    path = Path(spa.__file__).parent / "cli" / "firewall_cmd.py"
    spec = importlib.util.spec_from_file_location("spa_cli_firewall_cmd", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fallback_main(argv: list[str]) -> int:
    from spa.errors import SpaError

    firewall_cmd = load_firewall_cmd()

    parser = argparse.ArgumentParser(prog="spa")
    firewall_cmd.register(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except SpaError as error:
        print(f"spa: {error}", file=sys.stderr)
        return 1


def main(argv: list[str]) -> int:
    try:
        from spa.cli import main as spa_main
    except ImportError:
        return fallback_main(argv)
    return spa_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
