"""``spa check``: validate a config and its key store, and summarise them."""

from __future__ import annotations

import argparse
from pathlib import Path

from spa import config as config_module
from spa.core.events import Carrier


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "check",
        help="validate a server config and its keys",
        description="Validate a server config and every key in its key store; print a summary.",
        epilog="example:\n  spa check --config /etc/spa/spa.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, type=Path, help="server config file (spa.toml)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = config_module.load(args.config)
    keyring = config_module.load_keyring(config)
    carriers = list(config.carriers)
    print(f"{config.path}: OK")
    print(f"  firewall   {config.firewall.backend}, protecting {', '.join(map(str, config.firewall.protect))}")
    print(f"  carriers   {', '.join(carriers) or 'none'}")
    print(f"  window     ±{config.gate.time_window} s, repeats within {config.gate.repeat_window} s are one knock")
    for static in config.statics:
        steps = " ".join(map(str, static.steps))
        print(f"  sequence   {static.name}: {steps} within {static.timeout:g} s opens "
              f"{','.join(map(str, static.policy.open))}")
    print(f"  keys       {len(keyring)} in {config.keys_dir}")
    for entry in sorted(keyring.by_id.values(), key=lambda e: e.record.key_id):
        record = entry.record
        kinds = []
        if record.secret:
            kinds.append("secret")
        if record.public_key:
            kinds.append("ed25519")
        codes = []
        if record.totp_secret:
            codes.append("totp")
        if record.emergency_count:
            codes.append(f"{record.emergency_count} emergency codes")
        if codes and not record.policy.allow_codes:
            # Keys made before allow_codes existed: say so rather than refuse them silently.
            codes = [f"{c} (refused: no allow_codes)" for c in codes]
        kinds += codes
        via = ",".join(c.value for c in Carrier if c in record.policy.carriers)
        opens = ",".join(map(str, record.policy.open))
        print(f"    {record.key_id:5d} {record.name:<16} {'+'.join(kinds):<28} opens {opens} via {via}")
    return 0
