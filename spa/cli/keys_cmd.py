"""``spa init``, ``spa keygen`` and ``spa revoke``: a server's config and its keys."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from spa import config as config_module
from spa.core import keys, otp, pathtrust
from spa.core.events import Request
from spa.core.keys import ClientKey, KeyRecord
from spa.errors import SpaError
from spa.firewall.settings import BACKENDS

CONFIG_TEMPLATE = """\
# spa server configuration. Paths are relative to this file.
# Check it with: spa check --config {config}

[server]
keys_dir = "keys"              # one NAME.toml per person (spa keygen / spa revoke)
state_dir = "state"            # replay ledger: every accepted token, fsynced before a grant
secret_file = "server.secret"  # server-wide obfuscation key, shared with every client key
interfaces = [{interfaces}]          # where to listen for knocks; empty: every interface
user = "nobody"                # packets are parsed by this unprivileged user, never by root
time_window = 60               # seconds a token's clock may differ from ours
repeat_window = 30             # repeats of one knock within this many seconds are one knock

[policy]                       # defaults for every key; a key's own [policy] overrides them
open = [{protect}]
seconds = 30                   # how long a grant stays open
max_seconds = 300              # most a UDP knock may ask for
carriers = ["icmp", "dns", "udp", "sequence"]
sources = ["0.0.0.0/0", "::/0"]  # addresses a grant may open
allow_unbound = false          # tokens not bound to an address (risky behind shared NAT)
allow_codes = false            # one-time codes; spa keygen --totp/--emergency sets it for that key
single_use = false             # true: a grant lets exactly one new connection through

[limits]
source_rate = 5.0              # verifications per second per source address
key_rate = 0.5                 # grants per second per key (burst: key_burst)
otp_failures_per_source = 5    # wrong one-time codes before a source is locked out
otp_failures_per_key = 20      # a key's budget of wrong codes, from all sources together ...
otp_failures_per_key_per_day = 10  # ... and how much it grows back each day (kept across restarts)
lockout_seconds = 300

[otp]
totp_steps = 1                 # accept TOTP codes one 30 s step early or late
sequence_length = 3            # ports in a one-time port sequence
sequence_ports = "20000-59999"
sequence_step = 30             # a sequence changes every this many seconds

[firewall]
backend = "{backend}"          # nftables | iptables | command | dry-run
protect = [{protect}]          # refused for everyone without a grant
stealth = "closed"             # closed: refused ports answer as unused ones (RST); drop: silent, for default-drop hosts

[carriers.icmp]                # ping -p <token>
enabled = true
silence_replies = false        # true: no echo replies while spa runs (kernel sysctls)

[carriers.dns]                 # nslookup <token>.{zone}
enabled = {dns_enabled}
zone = "{zone}"
mode = "serve"                 # serve: spa answers on port 53; sniff: another DNS server does
ttl = 1                        # answers must not be cached: every knock is a fresh name

[carriers.udp]                 # spa knock --via udp
enabled = true
port = 62201

[carriers.sequence]            # knock HOST p1 p2 p3 (ports from a one-time password)
enabled = true
timeout = 10                   # seconds from the first port of a sequence to the last

# Fixed, knockd-style sequences (anyone who sees the ports can replay them;
# prefer the one-time kind above). Uncomment to use:
# [sequences.ssh]
# ports = ["tcp/7000", "udp/8000", "tcp/9000"]
# timeout = 5
# open = [{protect}]
"""


def _formatter() -> type[argparse.HelpFormatter]:
    return argparse.RawDescriptionHelpFormatter


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    init = subparsers.add_parser(
        "init",
        help="write a working server config with its secret, keys and state directories",
        formatter_class=_formatter(),
        epilog="example:\n  spa init --dir /etc/spa --protect tcp/22 --zone knock.example.com",
    )
    init.add_argument("--dir", required=True, type=Path, help="directory to create the config in")
    init.add_argument("--protect", required=True, help="ports to hide, e.g. tcp/22,tcp/3389")
    init.add_argument("--zone", default="", help="DNS knock zone delegated to this server")
    init.add_argument("--interface", action="append", default=[], help="interface to listen on (repeatable)")
    init.add_argument("--backend", default="nftables", choices=BACKENDS)
    init.set_defaults(func=run_init)

    keygen = subparsers.add_parser(
        "keygen",
        help="register a person's key and write their client key file",
        formatter_class=_formatter(),
        epilog=(
            "examples:\n"
            "  spa keygen alice --config /etc/spa/spa.toml --server 203.0.113.10\n"
            "  spa keygen bob --config spa.toml --server vpn.example.com --open tcp/22 --totp --emergency 10"
        ),
    )
    keygen.add_argument("name", help="lowercase letters and digits, e.g. alice")
    keygen.add_argument("--config", required=True, type=Path)
    keygen.add_argument("--server", required=True, help="address or name clients knock")
    keygen.add_argument("--open", help="ports this key may open (default: the config's policy)")
    keygen.add_argument("--totp", action="store_true", help="also enrol an authenticator app (prints a QR code)")
    keygen.add_argument("--emergency", type=int, default=0, metavar="N", help="print N single-use emergency codes")
    keygen.add_argument("--ed25519", action="store_true", help="signing key: the server keeps only the public key")
    keygen.add_argument("--out", type=Path, help="client key file (default ./NAME.spakey)")
    keygen.set_defaults(func=run_keygen)

    revoke = subparsers.add_parser(
        "revoke",
        help="remove a person's key (takes effect when spa reloads: SIGHUP)",
        formatter_class=_formatter(),
        epilog="example:\n  spa revoke alice --config /etc/spa/spa.toml",
    )
    revoke.add_argument("name")
    revoke.add_argument("--config", required=True, type=Path)
    revoke.set_defaults(func=run_revoke)


def _quoted(items: list[str]) -> str:
    return ", ".join(f'"{item}"' for item in items)


def run_init(args: argparse.Namespace) -> int:
    try:
        protect = [str(Request.parse(p)) for p in args.protect.split(",")]
    except ValueError as problem:
        raise SpaError(f"--protect: {problem}") from None
    directory: Path = args.dir
    config_path = directory / "spa.toml"
    if config_path.exists():
        raise SpaError(f"{config_path} exists already; not overwriting it")
    # spa serve trusts nothing others could change (pathtrust.py): refuse such
    # a place now, and make the tree private, as the first byte is written.
    pathtrust.check(directory, pathtrust.trusted_owners())
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for sub in ("keys", "state"):
        (directory / sub).mkdir(exist_ok=True, mode=0o700)
    keys.write_private(directory / "server.secret", keys.new_secret().hex() + "\n")
    keys.write_private(
        config_path,
        CONFIG_TEMPLATE.format(
            config=config_path,
            interfaces=_quoted(args.interface),
            protect=_quoted(protect),
            backend=args.backend,
            zone=args.zone or "knock.example.com",
            dns_enabled="true" if args.zone else "false",
        ),
    )
    config_module.load(config_path)  # what we wrote must load
    print(f"wrote {config_path}, {directory / 'server.secret'}, {directory / 'keys'}/, {directory / 'state'}/ "
          "(private: mode 0700)")
    print(f"next: spa keygen NAME --config {config_path} --server THIS_SERVERS_ADDRESS")
    return 0


def _pinned_open(open_: tuple[Request, ...]) -> dict[str, object]:
    # Tokens name a port by its index in the key's list, so the list is
    # pinned in the key's own entry: editing the config's defaults later
    # must not shift what an index means.
    return {"open": [str(r) for r in open_]}


def run_keygen(args: argparse.Namespace) -> int:
    config = config_module.load(args.config)
    config_module.check_ownership(config)  # a key added to a store spa serve would refuse is no key
    name: str = args.name
    if not keys.valid_name(name):
        raise SpaError(f"{name!r}: key names are 1-{otp.MAX_NAME} lowercase letters and digits, starting with a "
                       "letter (name-code-address must fit one 63-character DNS label)")
    existing = keys.load_store(config.keys_dir, config.policy, config.firewall.protect)
    if any(record.name == name for record in existing):
        raise SpaError(f"a key named {name} exists already (spa revoke {name} first)")
    used = {record.key_id for record in existing}
    key_id = next(i for i in range(1, 0x10000) if i not in used)
    requested = None
    if args.open:
        try:
            requested = tuple(Request.parse(p) for p in args.open.split(","))
        except ValueError as problem:
            raise SpaError(f"--open: {problem}") from None
        for request in requested:
            if request not in config.firewall.protect:
                raise SpaError(f"--open: {request} is not protected by this server (firewall.protect)")
    open_ = requested or config.policy.open
    if not 0 <= args.emergency <= 100:
        raise SpaError("--emergency: 0-100 codes")

    secret = keys.new_secret()
    seed = public = None
    if args.ed25519:
        seed, public = keys.new_signing_key()
    codes = bool(args.totp or args.emergency)
    record = KeyRecord(
        name=name,
        key_id=key_id,
        policy=dataclasses.replace(config.policy, open=open_, allow_codes=codes),
        secret=secret,
        public_key=public,
        totp_secret=otp.new_secret() if args.totp else None,
        emergency_secret=otp.new_secret() if args.emergency else None,
        emergency_count=args.emergency,
    )
    if args.ed25519:
        # A signing key exists so that the server holds nothing that can knock.
        record = dataclasses.replace(record, secret=None)
    client = ClientKey(
        name=name,
        key_id=key_id,
        server=args.server,
        obfuscation_key=config_module.read_server_secret(config.secret_file),
        open=open_,
        secret=record.secret,
        signing_key=seed,
        zone=config.dns.zone if config.dns else "",
        udp_port=config.udp.port if config.udp else 62201,
        sequence=config.gate.sequence,
    )
    out: Path = args.out or Path(f"{name}.spakey")
    if out.exists():
        raise SpaError(f"{out} exists already; not overwriting it (use --out)")
    overrides = _pinned_open(open_)
    if codes:
        # Enrolled for codes, so it admits them; no other key does (docs/threat-model.md, "Code races").
        overrides["allow_codes"] = True
    keys.write_private(config.keys_dir / f"{name}{keys.KEY_SUFFIX}", record.render(overrides))
    keys.write_private(out, client.render())
    print(f"key {name} (id {key_id}) added to {config.keys_dir}; client key file: {out}")
    print("the running server picks it up on reload (SIGHUP)")
    if record.totp_secret:
        _print_totp(record, issuer=args.server)
    if record.emergency_secret:
        _print_emergency(record, client.zone, args.server)
    return 0


def _print_totp(record: KeyRecord, issuer: str) -> None:
    assert record.totp_secret is not None
    uri = otp.otpauth_uri(record.totp_secret, record.name, issuer=f"spa {issuer}", digits=record.totp_digits)
    print("\nScan with an authenticator app (or enter the URI):")
    print(uri)
    import segno  # here, not at the top: it pulls in urllib, http and xml, which `spa serve` never needs

    segno.make(uri, error="m").terminal(out=sys.stdout, compact=True)
    print(f"then knock with:  nslookup {record.name}-<code>.<zone>   or   "
          f"ping -c 2 -p {record.key_id:04x}<code> SERVER")


def _print_emergency(record: KeyRecord, zone: str, server: str) -> None:
    assert record.emergency_secret is not None
    codes = otp.emergency_codes(record.emergency_secret, record.emergency_count)
    print(f"\nEmergency codes for {record.name}: each works once. Print them and keep them safe.")
    for number, code in enumerate(codes, start=1):
        label = otp.to_label(record.name, code)
        dns = f"nslookup {label}.{zone}" if zone else f"(DNS: {label}.<zone>)"
        print(f"  {number:2d}. {code}   {dns}   ping -c 2 -p {otp.to_pattern(record.key_id, code)} {server}")


def run_revoke(args: argparse.Namespace) -> int:
    config = config_module.load(args.config)
    if not keys.valid_name(args.name):
        raise SpaError(f"{args.name!r} is not a key name")
    path = config.keys_dir / f"{args.name}{keys.KEY_SUFFIX}"
    if not path.exists():
        raise SpaError(f"no key named {args.name} in {config.keys_dir}")
    os.remove(path)
    print(f"revoked {args.name}: removed {path}; reload the server (SIGHUP) to apply")
    return 0
