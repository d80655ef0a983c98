"""Fixtures for unit tests (no root, no network)."""

from __future__ import annotations

import pytest
from makings import Bench, make_bench


@pytest.fixture
def bench() -> Bench:
    """A fresh gate with alice and bob, judged at the fixed time NOW."""
    return make_bench()
