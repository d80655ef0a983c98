"""The skip-or-fail rule every e2e fixture goes through (no root needed)."""

from __future__ import annotations

import pytest
from world import need


def test_missing_prerequisite_skips_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs the moon"):
        need(False, "needs the moon")


def test_missing_prerequisite_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true but needs the moon"):
        need(False, "needs the moon")


def test_present_prerequisite_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    need(True, "never shown")
