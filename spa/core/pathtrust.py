"""Whether anyone but root could change what a path names, as sshd's StrictModes asks.

spa serve runs as root and acts on its config, key store and state
directory. If another user could write any of them, or any directory on
the way to them, that user could hand root their own keys, or names that
lead root to files of its own. So each is walked from ``/`` the way the
kernel looks it up, following symbolic links one at a time, and refused if
any entry on the way is owned by someone other than the trusted owners, or
any directory on the way (or the path itself) is writable by group or
others. A world-writable directory with the sticky bit set (``/tmp``) is
allowed on the way: there others may add names but not rename or remove
ours, and every entry looked up in it must be trusted itself.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from spa.errors import SpaError

MAX_LINKS = 40  # as the kernel's limit on symbolic links in one lookup


class UntrustedPath(SpaError):
    """A config, key or state path that anyone but root could change."""


def trusted_owners() -> frozenset[int]:
    """root, and the user spa runs as (the same when spa runs as root)."""
    return frozenset({0, os.geteuid()})


def check(path: Path, owners: frozenset[int], last_owners: frozenset[int] | None = None) -> None:
    """Raise UntrustedPath unless only ``owners`` can change what ``path`` names.

    ``last_owners`` (default ``owners``) may own the path itself. A part of
    ``path`` that does not exist yet is fine: it can only be made in a
    directory already found trusted.
    """
    pending = list(reversed(Path(path).absolute().parts[1:]))
    current = Path("/")
    _check_entry(current, os.lstat(current), owners, last=not pending, path=path)
    links = 0
    while pending:
        name = pending.pop()
        if name in ("", "."):
            continue
        if name == "..":
            current = current.parent  # already walked through: it was checked on the way down
            continue
        candidate = current / name
        try:
            info = os.lstat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            return
        if stat.S_ISLNK(info.st_mode):
            _check_owner(candidate, info, owners, path)
            links += 1
            if links > MAX_LINKS:
                raise UntrustedPath(f"{path}: more than {MAX_LINKS} symbolic links on the way")
            target = Path(os.readlink(candidate))
            if target.is_absolute():
                current = Path("/")
            pending.extend(reversed(target.parts[1:] if target.is_absolute() else target.parts))
            continue
        last = not pending
        _check_entry(candidate, info, (last_owners or owners) if last else owners, last, path)
        current = candidate


def _check_entry(entry: Path, info: os.stat_result, owners: frozenset[int], last: bool, path: Path) -> None:
    _check_owner(entry, info, owners, path)
    mode = stat.S_IMODE(info.st_mode)
    if not mode & 0o022:
        return
    if not last and stat.S_ISDIR(info.st_mode) and mode & stat.S_ISVTX:
        return  # sticky: others cannot rename or remove what we look up here (owner checked)
    raise UntrustedPath(
        f"{entry}: writable by group or others (mode {mode:04o}){_on_the_way(entry, path)}; "
        f"spa trusts no config, key or state path anyone but root could change (chmod go-w {entry})"
    )


def _check_owner(entry: Path, info: os.stat_result, owners: frozenset[int], path: Path) -> None:
    if info.st_uid not in owners:
        raise UntrustedPath(
            f"{entry}: owned by uid {info.st_uid}, not {_names(owners)}{_on_the_way(entry, path)}; "
            f"spa trusts no config, key or state path anyone but root could change (chown root {entry})"
        )


def _names(owners: frozenset[int]) -> str:
    return " or ".join("root" if uid == 0 else f"uid {uid}" for uid in sorted(owners))


def _on_the_way(entry: Path, path: Path) -> str:
    return "" if entry == Path(path).absolute() else f" (on the way to {path})"
