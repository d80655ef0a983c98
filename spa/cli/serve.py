"""``spa serve``: run the knock server in the foreground (systemd runs it so)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from spa.daemon.supervisor import Supervisor


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "serve",
        help="run the knock server in the foreground",
        description=(
            "Guard the protected ports, listen for knocks on every carrier the config\n"
            "turns on, and grant. One log line per decision on stderr (the journal).\n"
            "Signals: HUP reloads config and keys, USR1 logs the counters, TERM stops.\n"
            "Exit status: 0 stopped, 1 error (one line says which), 3 spa's firewall\n"
            "rules were removed by someone else and could not be put back."
        ),
        epilog="example:\n  spa serve --config /etc/spa/spa.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, type=Path, help="server config file (spa.toml)")
    parser.add_argument("--verbose", action="store_true", help="also log firewall details")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    if not args.verbose:
        logging.getLogger("spa.firewall").setLevel(logging.WARNING)
    return Supervisor(args.config).run()
