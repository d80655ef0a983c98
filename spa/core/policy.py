"""What one key may open: ports, how long, by which carriers, for which addresses."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any, TypeVar, Union

from .events import Carrier, IPAddress, Request
from .tomlfile import Document

T = TypeVar("T")

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

EVERYWHERE: tuple[IPNetwork, ...] = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


@dataclass(frozen=True)
class Policy:
    """The rules a verified knock must still pass before it becomes a grant.

    ``open`` is ordered: compact tokens name a port by its index in it, so
    the client key file lists the same ports in the same order.
    ``sources`` limits the address a grant opens (not the packet's source:
    a DNS knock arrives from a resolver).
    ``allow_codes`` admits one-time codes (TOTP, emergency): a code binds no
    address, so anyone who sees one in flight can use it first for their own
    (docs/threat-model.md, "Code races"); only keys enrolled for codes set it.
    """

    open: tuple[Request, ...]
    seconds: int = 30
    max_seconds: int = 300
    carriers: frozenset[Carrier] = frozenset(Carrier)
    sources: tuple[IPNetwork, ...] = EVERYWHERE
    allow_unbound: bool = False
    single_use: bool = False
    allow_codes: bool = False

    def __post_init__(self) -> None:
        if not self.open:
            raise ValueError("a policy must open at least one port")
        if len(self.open) > 256:
            raise ValueError("a key may open at most 256 ports (tokens index them in one byte)")
        if not 1 <= self.seconds <= self.max_seconds <= 86400:
            raise ValueError("need 1 <= seconds <= max_seconds <= 86400")

    @cached_property
    def _everywhere(self) -> bool:
        return all(network.prefixlen == 0 for network in self.sources) and len({n.version for n in self.sources}) == 2

    def grant_seconds(self, asked: int) -> int:
        """The grant length: the asked value capped by max_seconds (0: default)."""
        return self.seconds if asked == 0 else min(asked, self.max_seconds)

    def refusal(self, carrier: Carrier, address: IPAddress, requests: tuple[Request, ...], unbound: bool,
                code: bool = False) -> str | None:
        """Why this knock may not be granted, or None if it may.

        ``unbound``: a token whose MAC covers no address; ``code``: a one-time
        code, which cannot bind one (its address is the packet's source or a
        claim in the label, either of which anyone on the path can change).
        """
        if carrier not in self.carriers:
            return f"carrier {carrier.value} not allowed"
        if unbound and not self.allow_unbound:
            return "unbound tokens not allowed"
        if code and not self.allow_codes:
            return "one-time codes not allowed for this key (allow_codes)"
        if not self._everywhere and not any(
            address in network for network in self.sources if network.version == address.version
        ):
            return f"address {address} outside allowed sources"
        for request in requests:
            if request not in self.open:
                return f"{request} not allowed"
        return None


POLICY_OPTIONS = ("open", "seconds", "max_seconds", "carriers", "sources", "allow_unbound", "single_use", "allow_codes")


def read_policy(doc: Document, table: tuple[str, ...], base: Policy | None, ignore: tuple[str, ...] = ()) -> Policy:
    """Build a Policy from ``table`` of ``doc``, over ``base`` (the defaults).

    Every error names the file, line and option it came from. Options in
    ``ignore`` belong to the enclosing table and are read by its caller.
    """
    node: Any = doc.data
    for part in table:
        node = node.get(part, {}) if isinstance(node, dict) else {}
    if not isinstance(node, dict):
        doc.fail(table, "expected a table")
    for option in node:
        if option not in POLICY_OPTIONS and option not in ignore:
            doc.fail((*table, option), f"unknown option (known: {', '.join(POLICY_OPTIONS)})")
    values: dict[str, Any] = {} if base is None else {f.name: getattr(base, f.name) for f in fields(Policy)}

    def where(option: str) -> tuple[str, ...]:
        return (*table, option)

    if "open" in node:
        values["open"] = tuple(_each(doc, where("open"), node["open"], Request.parse))
    for option in ("seconds", "max_seconds"):
        if option in node:
            if not isinstance(node[option], int) or isinstance(node[option], bool) or node[option] < 1:
                doc.fail(where(option), "expected a positive whole number of seconds")
            values[option] = node[option]
    if "carriers" in node:
        values["carriers"] = frozenset(_each(doc, where("carriers"), node["carriers"], Carrier))
    if "sources" in node:
        values["sources"] = tuple(_each(doc, where("sources"), node["sources"], _source_network))
    for option in ("allow_unbound", "single_use", "allow_codes"):
        if option in node:
            if not isinstance(node[option], bool):
                doc.fail(where(option), "expected true or false")
            values[option] = node[option]
    if "open" not in values:
        doc.fail(where("open"), "missing: which ports may this key open? e.g. [\"tcp/22\"]")
    try:
        return Policy(**values)
    except ValueError as problem:
        doc.fail(table, str(problem))


_MAPPED = ipaddress.ip_network("::ffff:0:0/96")


def _source_network(text: str) -> IPNetwork:
    """One ``sources`` entry; IPv4-mapped networks are refused (they would never match).

    No knock may name an IPv4-mapped address (spa.core.addresses), so such a
    network is a mistake for its IPv4 form, which the message gives.
    """
    network = ipaddress.ip_network(text, strict=False)
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):  # type: ignore[arg-type]
        first = network.network_address.ipv4_mapped
        plain = ipaddress.ip_network(f"{first}/{network.prefixlen - 96}")
        raise ValueError(f"{text} is an IPv4-mapped network: write {plain}")
    return network


def _each(doc: Document, option: tuple[str, ...], value: Any, convert: Callable[[str], T]) -> list[T]:
    if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
        doc.fail(option, "expected a non-empty list of strings")
    try:
        return [convert(item) for item in value]
    except ValueError as problem:
        doc.fail(option, str(problem))
