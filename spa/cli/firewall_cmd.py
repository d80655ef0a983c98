"""``spa firewall install|uninstall`` and ``spa status``.

``install`` puts the guard (and the backend's grant structures) in place, or
with ``--output FILE`` writes the guard as an nft script for the boot-time
ruleset, so the ports stay closed while spa is not running. ``uninstall``
removes spa's own tables, chains and sets and nothing else. ``status`` lists
the grants open right now.

Settings come from ``--config`` (the ``[firewall]`` table), overridden by
``--backend`` and ``--protect``, or from those flags alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from spa.core.events import Request
from spa.daemon.messages import valid_counter
from spa.daemon.statedir import read_status
from spa.errors import SpaError
from spa.firewall import BACKENDS, Backend, FirewallSettings, LiveGrant, open_backend
from spa.firewall.nft_render import guard_script


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``firewall`` (install, uninstall) and ``status`` to the spa command."""
    firewall = subparsers.add_parser(
        "firewall", help="install or remove spa's firewall guard",
        description="Install or remove spa's guard and grant structures.",
    )
    verbs = firewall.add_subparsers(dest="firewall_verb", metavar="VERB")
    install = verbs.add_parser(
        "install", help="close the protected ports (guard) and prepare grants",
        description="Install the guard and grant structures in the running kernel, or "
        "with --output write the guard as an nft script to load at boot.",
        epilog="examples:\n  spa firewall install --config /etc/spa/spa.toml\n"
        "  spa firewall install --config /etc/spa/spa.toml --output /etc/spa/guard.nft",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _settings_options(install)
    install.add_argument(
        "--output", metavar="FILE",
        help="write the guard as an nft script instead (e.g. /etc/nftables.d/spa-guard.nft); "
        "needs no privilege",
    )
    install.set_defaults(func=_install)

    uninstall = verbs.add_parser(
        "uninstall", help="remove spa's tables, chains and sets (nothing else)",
        epilog="example:\n  spa firewall uninstall --config /etc/spa/spa.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _settings_options(uninstall)
    uninstall.set_defaults(func=_uninstall)
    firewall.set_defaults(func=lambda args: _usage(firewall))

    status = subparsers.add_parser(
        "status", help="list the grants open right now (and, with --config, the server's counters)",
        epilog="example:\n  spa status --config /etc/spa/spa.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _settings_options(status)
    status.set_defaults(func=_status)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _settings_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="spa configuration file ([firewall] section)")
    parser.add_argument("--backend", choices=BACKENDS, help="firewall backend (default nftables)")
    parser.add_argument(
        "--protect", metavar="LIST",
        help="comma-separated ports to guard, e.g. tcp/22,tcp/3389 (default tcp/22)",
    )


def settings_from_args(args: argparse.Namespace) -> FirewallSettings:
    """FirewallSettings from the config file's [firewall] table, if given,
    with --backend and --protect overriding it."""
    values: dict[str, object] = {}
    if args.config:
        from spa import config  # only when asked: the verbs also work without a config

        values = {f.name: getattr(config.load(Path(args.config)).firewall, f.name)
                  for f in dataclasses.fields(FirewallSettings)}
    if args.backend:
        values["backend"] = args.backend
    if args.protect:
        try:
            values["protect"] = tuple(
                Request.parse(part) for part in args.protect.split(",") if part.strip()
            )
        except ValueError as error:
            raise SpaError(f"--protect: {error}") from None
    return FirewallSettings(**values)  # type: ignore[arg-type]


@contextmanager
def _backend(settings: FirewallSettings) -> Iterator[Backend]:
    """The backend for one command, closed (and, if owned, its grant table with it) after."""
    backend = open_backend(settings)
    try:
        yield backend
    finally:
        backend.close()


def _install(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if args.output:
        write_atomically(Path(args.output), guard_script(settings))
        print(f"wrote the guard for {_ports(settings)} to {args.output}")
        return 0
    with _backend(settings) as backend:
        backend.install()
    print(f"guard installed ({settings.backend}): {_ports(settings)} closed except for grants")
    return 0


def _uninstall(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    with _backend(settings) as backend:
        backend.uninstall()
    print(f"removed spa's firewall objects ({settings.backend})")
    return 0


def _status(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    with _backend(settings) as backend:
        grants = backend.live()
    sys.stdout.write(format_status(grants))
    if args.config:
        sys.stdout.write(format_counters(Path(args.config)))
    return 0


def format_counters(config_path: Path) -> str:
    """The counters the running server last wrote to its state directory."""
    from spa import config  # only when asked, as in settings_from_args

    try:
        status = json.loads(read_status(config.load(config_path).state_dir))
    except (OSError, ValueError):
        return "server: no counters (is spa serve running?)\n"
    return describe_status(status if isinstance(status, dict) else {}, time.time())


def describe_status(status: dict[str, object], now: float) -> str:
    """status.json for people. Its counter names once came from the worker, so
    only names and numbers of the shape spa makes are printed, never raw text
    (a name could carry terminal escape sequences)."""
    counts = status.get("counts")
    counts = counts if isinstance(counts, dict) else {}
    shown = sorted((name, value) for name, value in counts.items() if valid_counter(name, value))
    at = status.get("time")
    age = f"{now - at:.0f} s ago" if isinstance(at, (int, float)) and _number(at) and math.isfinite(at) \
        else "an unknown time"
    lines = [f"server: worker {_whole(status.get('worker'))}, {_whole(status.get('grants_applied'))} grants applied, "
             f"counters from {age}"]
    lines += [f"  {name:<24} {value}" for name, value in shown]
    if len(shown) < len(counts):
        lines.append(f"  ({len(counts) - len(shown)} entries not shown: not counters spa writes)")
    unexpected = dict(shown).get("errors.unexpected", 0)
    if unexpected:
        # A bug spa survived (spa/daemon/contain.py): worth a look and a report.
        lines.append(f"server: {unexpected} unexpected errors were contained; "
                     "the log has each kind once, with its traceback")
    return "\n".join(lines) + "\n"


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(value: object) -> str:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else "?"


def format_status(grants: list[LiveGrant]) -> str:
    """A table people read: address, port, seconds left, who."""
    if not grants:
        return "no live grants\n"
    rows = [("ADDRESS", "PORT", "LEFT", "WHO")]
    for grant in grants:
        who = grant.key or "?"
        if grant.single_use:
            who += " (single use)"
        rows.append((str(grant.address), str(grant.request), f"{grant.seconds_left:.0f}s", who))
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    return "".join(
        f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]}\n"
        for row in rows
    )


def write_atomically(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so nft never loads half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
            # By descriptor: the directory may be writable by others, who
            # could swap the temporary name for a link to a file of root's.
            os.fchmod(handle.fileno(), 0o644)
        os.replace(temporary, path)
    except OSError as error:
        raise SpaError(f"cannot write {path}: {error.strerror or error}") from None


def _ports(settings: FirewallSettings) -> str:
    return ", ".join(str(r) for r in settings.protect)
