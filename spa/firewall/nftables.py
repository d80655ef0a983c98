"""The default backend: nftables through libnftables, in-process.

The guard table is permanent (it also belongs in the boot-time ruleset); the
grant table is created by the daemon with ``flags owner`` and so disappears
with the daemon's netlink socket, closing every grant at once when spa exits
or is killed. Each grant is a set element with a kernel timeout, so even with
``owner = False`` nothing stays open past its grant.
"""

from __future__ import annotations

import logging

from spa.core.events import Grant, IPAddress, Request

from . import netlink, nft_render
from .base import FirewallError, LiveGrant, check_grant, host
from .libnft import Nft, NftError
from .settings import FirewallSettings

log = logging.getLogger(__name__)

# Stand-ins for a listing that failed (no nft listing starts like these).
MISSING = "missing"
UNREADABLE = "unreadable: "


class NftablesBackend:
    """Grants as nftables set elements, applied with one libnftables context.

    The context (and its netlink socket) lives as long as this object: that
    socket owns the grant table. Call :meth:`close` on orderly shutdown.
    """

    def __init__(self, settings: FirewallSettings, nft: Nft | None = None, *, fast: bool = True) -> None:
        """``fast=False`` keeps every grant on the libnftables text path (a baseline for benchmarks)."""
        self.settings = settings
        self._nft = nft if nft is not None else Nft()
        self._fast = fast
        self._writer: netlink.ElementWriter | None = None
        # The kernel's own listing of each structure right after install:
        # what damage() compares against (None until installed).
        self._installed: dict[str, str] | None = None

    def install(self) -> None:
        """(Re)create the guard, then the grant table this context owns.

        The guard goes first so that there is never a moment with grants but
        no drop. Recreating the grant table ends grants from an earlier run
        of a non-owned table; established sessions survive through conntrack.
        """
        self._run(nft_render.guard_script(self.settings), "install the guard table")
        self.install_grant_table()
        self._installed = self._listings()
        self._check_stealth()

    def _check_stealth(self) -> None:
        """Warn once, at install, if ``stealth`` stands out against the host's own policy."""
        try:
            listing = self._nft.run("list chains")
        except NftError as error:  # only a warning is lost: the guard is in place
            log.debug("cannot list chains to compare stealth with the host's policy: %s", error)
            return
        warning = nft_render.stealth_contrast(self.settings, nft_render.dropping_input_chains(listing))
        if warning:
            log.warning("%s", warning)

    def install_guard(self) -> None:
        self._run(nft_render.guard_script(self.settings), "install the guard table")

    def install_grant_table(self) -> None:
        try:
            self._nft.run(nft_render.grant_script(self.settings))
        except NftError as error:
            if "Operation not permitted" in str(error) or "Device or resource busy" in str(error):
                raise FirewallError(
                    f"grant table {self.settings.grant_table} is owned by another process "
                    "(is another spa running?)"
                ) from error
            raise FirewallError(f"cannot install the grant table: {error}") from error

    def grant(self, grant: Grant) -> None:
        check_grant(grant, self.settings.protect)
        single = self.settings.wants_single_use(grant.request, grant.single_use)
        if not self._grant_fast(grant, single):
            self._run(nft_render.grant_commands(self.settings, grant, single), f"grant {grant.request}")
        log.info(
            "granted %s to %s for %ds (%s via %s%s)",
            grant.request, grant.address, grant.seconds, grant.key, grant.carrier.value,
            ", single use" if single else "",
        )

    @property
    def fast_grants(self) -> bool:
        """Whether grants go by raw netlink (known only after the first grant)."""
        return self._writer is not None

    def _grant_fast(self, grant: Grant, single: bool) -> bool:
        """The same transaction as raw netlink on the context's socket (netlink.py).

        False when that path is unavailable or failed: the caller then uses
        the text path, which repeats the (idempotent) batch and reports any
        real problem in nft's words.
        """
        if self._writer is None:
            fd = self._nft.netlink_fd
            if fd is None or not self._fast:
                return False
            try:
                self._writer = netlink.ElementWriter(fd)
            except (OSError, netlink.NetlinkError):
                return False
        address = host(grant.address)
        target = nft_render.set_for(address, single)
        key = netlink.element_key(address, grant.request)
        comment = nft_render.who(grant.key, grant.carrier.value)
        family, table = self.settings.family, self.settings.grant_table
        try:
            self._writer.apply(lambda seq: netlink.grant_batch(family, table, target, key, grant.seconds, comment, seq))
        except netlink.NetlinkError as problem:
            log.debug("fast grant path failed (%s); using libnftables", problem)
            return False
        return True

    def revoke(self, address: IPAddress, request: Request) -> None:
        self._run(nft_render.revoke_commands(self.settings, address, request), "revoke")
        log.info("revoked %s for %s", request, address)

    def live(self) -> list[LiveGrant]:
        """Read the grant sets back (one listing per set).

        Sets, not the table: libnftables 1.0.6 prints an owned table's
        ``flags`` in JSON from the wrong name array (garbage or a truncated
        document), so a table listing cannot be parsed reliably.
        """
        family, table = self.settings.family, self.settings.grant_table
        items: list[object] = []
        for name in nft_render.SET_KINDS:
            try:
                document = self._nft.run_json(f"list set {family} {table} {name}")
            except NftError as error:
                if "No such file or directory" in str(error):
                    continue  # no grant table (no daemon): nothing granted
                raise FirewallError(f"cannot list grants: {error}") from error
            items.extend(document.get("nftables", []))
        return nft_render.parse_live({"nftables": items}, self.settings)

    def uninstall(self) -> None:
        """Delete spa's two tables, nothing else; missing tables are fine."""
        family = self.settings.family
        present = self.tables()
        for table in (self.settings.grant_table, self.settings.guard_table):
            if table not in present:
                continue
            try:
                self._nft.run(f"delete table {family} {table}\n")
            except NftError as error:
                if "Operation not permitted" in str(error):
                    raise FirewallError(
                        f"table {table} is owned by a running spa; stop it first "
                        "(its grants vanish with it)"
                    ) from error
                raise FirewallError(f"cannot remove table {table}: {error}") from error

    def tables(self) -> set[str]:
        """Names of the tables of our family that exist now (ours or not).

        Text output on purpose: the JSON listing of an owned table is broken
        in libnftables 1.0.6 (see :meth:`live`).
        """
        try:
            listing = self._nft.run("list tables")
        except NftError as error:
            raise FirewallError(f"cannot list tables: {error}") from error
        return nft_render.parse_tables(listing, self.settings.family)

    def damage(self) -> str | None:
        """Compare the guard table and the grant chain with their listing at install.

        Text listings (no handles, numeric): two netlink dumps, ~0.15 ms. The
        grant *sets* are left out on purpose, their elements change with every
        grant; they cannot go missing while the chain that uses them exists.
        """
        if self._installed is None:
            return "spa's firewall tables were never installed"
        now = self._listings()
        found = [f"{self._what(part)} {self._how(now[part])}"
                 for part in self._installed if now[part] != self._installed[part]]
        return "; ".join(found) or None

    def repair(self) -> None:
        """Recreate whichever table differs. The guard is replaced atomically;
        a recreated grant table starts empty (its grants were lost with it)."""
        if self._installed is None:
            self.install()
            return
        now = self._listings()
        if now["guard"] != self._installed["guard"]:
            self.install_guard()
        if now["grant"] != self._installed["grant"]:
            self.install_grant_table()

    def _listings(self) -> dict[str, str]:
        """The guard table and the grant chain as nft prints them now; on
        failure, the error (``missing`` when the object does not exist)."""
        family = self.settings.family
        commands = {
            "guard": f"list table {family} {self.settings.guard_table}",
            "grant": f"list chain {family} {self.settings.grant_table} input",
        }
        listings = {}
        for part, command in commands.items():
            try:
                listings[part] = self._nft.run(command)
            except NftError as error:
                listings[part] = MISSING if "No such file or directory" in str(error) else f"{UNREADABLE}{error}"
        return listings

    def _what(self, part: str) -> str:
        family = self.settings.family
        if part == "guard":
            return f"the guard table {family} {self.settings.guard_table}"
        return f"the grant chain {family} {self.settings.grant_table} input"

    @staticmethod
    def _how(listing: str) -> str:
        if listing == MISSING:
            return "is missing"
        if listing.startswith(UNREADABLE):
            return f"cannot be read ({listing.removeprefix(UNREADABLE)})"
        return "was changed"

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()  # a duplicate: the socket lives until the context goes
            self._writer = None
        self._nft.close()

    def _run(self, commands: str, what: str) -> None:
        try:
            self._nft.run(commands)
        except NftError as error:
            raise FirewallError(f"cannot {what}: {error}") from error
