"""FirewallSettings: defaults that work, and settings that cannot work refused."""

from __future__ import annotations

import pytest

from spa.core.events import Request
from spa.firewall import BACKENDS, Backend, FirewallSettings, FirewallSettingsError, open_backend


def test_defaults_guard_ssh_with_nftables() -> None:
    settings = FirewallSettings()
    assert settings.backend == "nftables"
    assert settings.protect == (Request("tcp", 22),)
    assert (settings.guard_table, settings.grant_table, settings.family) == (
        "spa_guard", "spa_grant", "inet")
    assert settings.grant_priority < settings.guard_priority
    assert settings.owner
    assert settings.stealth == "closed"  # refused ports answer as unused ones


def test_lists_become_tuples() -> None:
    settings = FirewallSettings(protect=[Request("tcp", 22)], start_command=["true"])  # type: ignore[arg-type]
    assert settings.protect == (Request("tcp", 22),)
    assert settings.start_command == ("true",)
    hash(settings)  # frozen and hashable: safe to share between threads


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"backend": "pf"}, "backend must be one of"),
        ({"family": "ip"}, "family must be inet"),
        ({"guard_table": "spa guard; flush ruleset"}, "guard_table"),
        ({"grant_table": "x" * 40}, "grant_table"),
        ({"grant_table": "spa_guard"}, "must differ"),
        ({"grant_priority": 0}, "grant_priority must be lower"),
        ({"guard_priority": 400, "grant_priority": 0}, "between"),
        ({"mark": 0}, "mark"),
        ({"mark": 1 << 32}, "mark"),
        ({"protect": ()}, "nothing to guard"),
        ({"protect": ("tcp/22",)}, "not a proto/port request"),
        ({"single_use": (Request("tcp", 80),)}, "not protected: tcp/80"),
        ({"backend": "command"}, "needs start_command"),
        ({"stealth": "reject"}, "stealth must be one of 'closed', 'drop', not 'reject'"),
        ({"stealth": ""}, "stealth must be one of"),
    ],
)
def test_refuses_settings_that_cannot_work(changes: dict[str, object], message: str) -> None:
    with pytest.raises(FirewallSettingsError, match=message):
        FirewallSettings(**changes)  # type: ignore[arg-type]


def test_single_use_by_setting_or_by_grant() -> None:
    settings = FirewallSettings(
        protect=(Request("tcp", 22), Request("tcp", 3389)), single_use=(Request("tcp", 3389),)
    )
    assert settings.wants_single_use(Request("tcp", 3389), asked=False)
    assert settings.wants_single_use(Request("tcp", 22), asked=True)
    assert not settings.wants_single_use(Request("tcp", 22), asked=False)


def test_every_backend_opens_and_fits_the_protocol() -> None:
    for name in BACKENDS:
        extra = {"start_command": ("true",)} if name == "command" else {}
        backend = open_backend(FirewallSettings(backend=name, **extra))  # type: ignore[arg-type]
        assert isinstance(backend, Backend)
        backend.close()
