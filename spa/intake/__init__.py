"""Packet intake: hear candidate knocks on the wire and hand over their bytes.

``packet`` parses one IP packet into source, port and payload. The intake
only moves bytes: it knows no token format (that is the carriers' business).
"""

from .packet import Packet, parse

__all__ = ["Packet", "parse"]
