"""Applying grants: firewall backends behind one small interface.

``open_backend(settings)`` picks the backend named in
:class:`FirewallSettings`; every backend implements :class:`Backend`.
See docs/firewall.md for the nftables layout and each backend's limits.
"""

from __future__ import annotations

from .base import Backend, FirewallError, LiveGrant, check_grant
from .settings import BACKENDS, FirewallSettings, FirewallSettingsError

__all__ = [
    "BACKENDS",
    "Backend",
    "FirewallError",
    "FirewallSettings",
    "FirewallSettingsError",
    "LiveGrant",
    "check_grant",
    "open_backend",
]


def open_backend(settings: FirewallSettings) -> Backend:
    """The backend ``settings.backend`` names, ready for ``install()``.

    Imports are local so that the dry-run backend works on hosts without
    libnftables and nothing loads a C library until it is needed.
    """
    if settings.backend == "nftables":
        from .nftables import NftablesBackend

        return NftablesBackend(settings)
    if settings.backend == "iptables":
        from .iptables import IptablesBackend

        return IptablesBackend(settings)
    if settings.backend == "command":
        from .command import CommandBackend

        return CommandBackend(settings)
    from .dryrun import DryRunBackend

    return DryRunBackend(settings)
