"""spa: a stealth knock server.

Layout: ``spa.core`` is the sans-IO heart (token formats, keys, one-time
passwords, the gate, config); ``spa.firewall`` applies grants; the CLI in
``spa.cli`` wires them together. See docs/architecture.md.
"""

__version__ = "0.1.0"
