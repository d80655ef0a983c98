"""One rule for e2e prerequisites: skip on a developer's machine, fail in CI.

CI (``CI=true``) promises root and every tool, so a missing one there is a
broken pipeline, not a reason to quietly test less.
"""

from __future__ import annotations

import ctypes.util
import os
import shutil

import pytest


def need(ok: bool, reason: str) -> None:
    """Stop the test unless ``ok``: pytest.fail in CI, pytest.skip elsewhere."""
    if ok:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


def need_netns(*tools: str, libraries: tuple[str, ...] = ()) -> None:
    """Root, ``ip`` with netns support, plus the named programs and C libraries."""
    need(os.geteuid() == 0, "needs root for network namespaces")
    for tool in ("ip", *tools):
        need(shutil.which(tool) is not None, f"needs the {tool!r} program")
    for library in libraries:
        found = ctypes.util.find_library(library)
        if found is None:
            try:
                ctypes.CDLL(f"lib{library}.so.1")
                found = library
            except OSError:
                pass
        need(found is not None, f"needs the lib{library} shared library")
