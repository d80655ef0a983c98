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
from spa.core.limits import Buckets
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


class GrantBudget:
    """How many grants root applies per key: what honest knocks can ask for, no more.

    The gate lets a key through ``key_rate`` knocks a second (burst
    ``key_burst``), each asking for at most every port of its policy once.
    A subverted worker is not held by the gate, so root counts too: without
    it an outside review had root apply 20,000 grants in 5 s, one per
    address, each within policy (kernel memory, root's log, and one thread
    per grant for the command backend).
    """

    def __init__(self, keyring: Keyring, rate: float, burst: int) -> None:
        self.keyring = keyring
        self.rate = rate
        self.burst = burst
        self._buckets: dict[int, Buckets] = {}  # by how many ports a policy opens

    def refusal(self, grant: Grant, now: float) -> str | None:
        """Why this grant exceeds its key's budget (counted if not), or None."""
        policy = policy_for(grant.key, self.keyring)
        ports = len(policy.open) if policy else 1
        buckets = self._buckets.get(ports)
        if buckets is None:
            size = max(16, len(self.keyring) + len(self.keyring.statics))
            buckets = self._buckets[ports] = Buckets(self.rate * ports, self.burst * ports, size)
        if buckets.take(grant.key, now):
            return None
        return f"{grant.key} asked for more grants than its knocks could (key_rate)"

