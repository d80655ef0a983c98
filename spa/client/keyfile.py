"""Finding the person's key file: ``--key``, then ``$SPA_KEY``, then the config directory."""

from __future__ import annotations

import os
from pathlib import Path

from spa.core.keys import ClientKey, load_client_key
from spa.errors import KeyFileError


def config_directory() -> Path:
    """``$XDG_CONFIG_HOME/spa`` (usually ``~/.config/spa``); on Windows ``%APPDATA%\\spa``."""
    if os.name == "nt" and os.environ.get("APPDATA"):
        return Path(os.environ["APPDATA"]) / "spa"
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "spa"


def find(given: str | None) -> Path:
    if given:
        return Path(given)
    if os.environ.get("SPA_KEY"):
        return Path(os.environ["SPA_KEY"])
    directory = config_directory()
    found = sorted(directory.glob("*.spakey")) if directory.is_dir() else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise KeyFileError(f"no key file: give --key FILE, set SPA_KEY, or put one NAME.spakey in {directory}")
    names = ", ".join(p.name for p in found)
    raise KeyFileError(f"several key files in {directory} ({names}): choose one with --key")


def load(given: str | None) -> ClientKey:
    """The key file, checked private and well-formed (errors name the file)."""
    return load_client_key(find(given))
