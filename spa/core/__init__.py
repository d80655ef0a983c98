"""Protocol logic with no sockets: formats, keys, codes, the gate, config."""
