"""The ``spa`` command: one module per verb group, wired together here.

Each verb module exposes ``register(subparsers)`` and sets ``func`` on its
parser; ``func(args) -> int`` is the exit status. Errors meant for people are
:class:`spa.errors.SpaError` and print as one line, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from spa import __version__
from spa.errors import SpaError

from . import check, demo, firewall_cmd, keys_cmd, knock_cmd, serve

VERB_MODULES = (check, keys_cmd, serve, knock_cmd, firewall_cmd, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spa",
        description="Stealth knock server: opens a firewall port for an authenticated knock.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"spa {__version__}")
    subparsers = parser.add_subparsers(dest="verb", metavar="COMMAND")
    for module in VERB_MODULES:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except SpaError as error:
        print(f"spa: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
