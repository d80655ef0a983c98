"""The namespace test world: hosts made of network namespaces, for e2e tests.

``World`` builds a server and two client hosts joined by veth pairs (IPv4 and
IPv6), starts processes inside them and removes everything it made, even when
a test fails. ``need()`` is the single rule for missing tools or privilege:
skip locally, fail in CI. Import as ``world`` (tests/ is put on sys.path by
the conftest files that use it).
"""

from .need import need, need_netns
from .netns import Agent, Host, World

__all__ = ["Agent", "Host", "World", "need", "need_netns"]
