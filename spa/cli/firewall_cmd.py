"""``spa firewall install|uninstall`` and ``spa status`` (owned by spa.firewall)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Placeholder until the firewall verbs land; registers nothing yet."""
