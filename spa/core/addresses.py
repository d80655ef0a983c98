"""One form per host: an IPv4 host is its 4-byte address, never ``::ffff:a.b.c.d``.

An IPv4-mapped IPv6 address (RFC 4291 2.5.5.2) names an IPv4 host in IPv6
syntax. If it got in, the MAC and the policy would see an IPv6 address
(``sources`` judged against IPv6 networks) while the firewall, which must
match IPv4 packets, would open the IPv4 host: a key limited to some IPv4
networks could open any IPv4 address. So spa has one rule, applied where an
address enters: a knock that *names* a mapped address (extended token,
datagram, one-time-code label) is refused, a packet whose IPv6 source is
mapped is dropped, and the one place where the kernel itself writes IPv4
peers in mapped form (a dual-stack socket's peer address) converts it back
(:func:`from_socket`). Past the entry points nothing converts: the gate,
the supervisor's recheck and the firewall refuse a mapped address instead.
"""

from __future__ import annotations

import ipaddress

from .events import IPAddress


def is_mapped(address: IPAddress) -> bool:
    """Whether ``address`` is an IPv4-mapped IPv6 address (``::ffff:0:0/96``)."""
    return isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None


def refusal(address: IPAddress) -> str | None:
    """Why ``address`` may not be named by a knock or granted, or None if it may."""
    if is_mapped(address):
        return f"IPv4-mapped address {address}: an IPv4 host is named by its IPv4 address"
    return None


def from_socket(text: str) -> IPAddress:
    """A socket's peer address in the one form: no scope, and IPv4 as IPv4.

    A dual-stack (IPv6) socket reports an IPv4 peer as ``::ffff:a.b.c.d``:
    the packet was IPv4, so the 4-byte form is the truth, not a conversion
    of something a client wrote.
    """
    address = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
