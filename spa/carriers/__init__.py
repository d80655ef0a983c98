"""Carrier decoders: bytes from the wire to Knocks, pure code, no I/O."""
