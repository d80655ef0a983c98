"""Packet intake: hear candidate knocks on the wire and hand over their bytes.

``bpf`` compiles what the carriers want into a kernel socket filter,
``capture`` opens the ``AF_PACKET`` sockets and drains them, ``packet``
parses one IP packet into source, port and payload. The intake only moves
bytes: it knows no token format (that is the carriers' business).
"""

from .bpf import PortRange, Wanted, compile_filter
from .packet import Packet, parse

__all__ = ["Packet", "PortRange", "Wanted", "compile_filter", "parse"]
