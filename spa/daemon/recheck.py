"""The supervisor's second look at a grant the worker asks for. Pure code.

The worker parses hostile packets, so the supervisor assumes it may be
subverted: a grant is applied only if the key (or fixed sequence) it names
exists in the supervisor's own configuration and that policy allows this
carrier, address, port and length. A subverted worker can then at most
open what some key may open, which is what a knock could do anyway.
"""

from __future__ import annotations

from spa.core import addresses
from spa.core.events import Grant
from spa.core.keyring import Keyring
from spa.core.policy import Policy
from spa.firewall.settings import FirewallSettings

STATIC_PREFIX = "sequence:"


def policy_for(key: str, keyring: Keyring) -> Policy | None:
    if key.startswith(STATIC_PREFIX):
        static = keyring.statics.get(key[len(STATIC_PREFIX):])
        return static.policy if static else None
    entry = keyring.by_name.get(key)
    return entry.record.policy if entry else None


def refusal(grant: Grant, keyring: Keyring, firewall: FirewallSettings) -> str | None:
    """Why ``grant`` must not be applied, or None if it may."""
    policy = policy_for(grant.key, keyring)
    if policy is None:
        return f"no key or sequence named {grant.key!r}"
    mapped = addresses.refusal(grant.address)
    if mapped:
        # Policy would judge it as IPv6 and the firewall match it as IPv4.
        return mapped
    if grant.request not in policy.open:
        return f"{grant.key} may not open {grant.request}"
    if grant.request not in firewall.protect:
        return f"{grant.request} is not protected"
    if grant.seconds > policy.max_seconds:
        return f"{grant.seconds} s is longer than {grant.key}'s max_seconds"
    if policy.single_use and not grant.single_use:
        return f"{grant.key}'s grants must be single use"
    # Whether the token was bound is not in a Grant; the gate checked it.
    why = policy.refusal(grant.carrier, grant.address, (grant.request,), unbound=False)
    if why:
        return why
    return None
