"""The one small interface every firewall backend offers, and what it reports.

A backend turns :class:`spa.core.events.Grant` values into kernel state that
expires by itself. The daemon holds one backend for its whole life; the CLI
opens one briefly to install, uninstall or list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from spa.core import addresses
from spa.core.events import Grant, IPAddress, Request
from spa.errors import SpaError


class FirewallError(SpaError):
    """A firewall operation failed; the message says which and why."""


@dataclass(frozen=True)
class LiveGrant:
    """A grant the firewall holds right now (as read back from it).

    ``key`` is who knocked, when the backend can store it (nftables keeps it
    in the element comment); ``single_use`` grants vanish at their first use.
    """

    address: IPAddress
    request: Request
    seconds_left: float
    key: str | None = None
    single_use: bool = False


@runtime_checkable
class Backend(Protocol):
    """Apply grants so that the kernel, not spa, closes them again."""

    def install(self) -> None:
        """Make sure the guard and the grant structures exist. Idempotent."""

    def grant(self, grant: Grant) -> None:
        """Open ``grant.request`` for ``grant.address``; granting again renews it."""

    def revoke(self, address: IPAddress, request: Request) -> None:
        """Close a grant before its time; revoking a missing grant is no error."""

    def live(self) -> list[LiveGrant]:
        """The grants open right now, soonest to expire first."""

    def uninstall(self) -> None:
        """Remove everything this backend installed (spa's own objects only)."""

    def damage(self) -> str | None:
        """What of spa's installed structures is missing or changed, or None
        if all is as :meth:`install` left it. Cheap: the daemon asks every
        second, so that a guard deleted by someone else is noticed."""

    def repair(self) -> None:
        """Put back what :meth:`damage` reports, keeping live grants where
        the structure holding them survived. Raises FirewallError if it cannot."""

    def close(self) -> None:
        """Release resources. Grants stay until their kernel timeout (or go at
        once where the structure holding them is owned by this process)."""


def check_grant(grant: Grant, protect: tuple[Request, ...]) -> None:
    """Refuse grants a backend must never apply, whatever the caller checked.

    The privileged side re-checks policy (knockknock's privilege separation):
    only guarded ports can be granted, for a bounded time, to one host.
    """
    if grant.request not in protect:
        raise FirewallError(f"refusing grant for {grant.request}: not a protected port")
    if not isinstance(grant.seconds, int) or not 1 <= grant.seconds <= 86400:
        raise FirewallError(f"refusing grant of {grant.seconds!r} seconds: must be 1-86400")
    if grant.address.is_unspecified or grant.address.is_multicast:
        raise FirewallError(f"refusing grant for {grant.address}: not a single host")
    host(grant.address)
    if getattr(grant.address, "scope_id", None) is not None:
        # A scope ("fe80::1%eth0") is free text; backends write addresses into
        # nft and ipset commands, and no knock ever yields one.
        raise FirewallError(f"refusing grant for {grant.address}: scoped address")


def host(address: IPAddress) -> IPAddress:
    """``address`` as every backend writes it; an IPv4-mapped one is refused, never converted.

    Turning ``::ffff:a.b.c.d`` into a.b.c.d here would open an IPv4 host
    whose grant was judged as an IPv6 address (spa.core.addresses). The gate
    and the supervisor refuse such a grant first, so this is a last line,
    the one every backend draws.
    """
    mapped = addresses.refusal(address)
    if mapped:
        raise FirewallError(f"refusing {mapped}")
    return address

