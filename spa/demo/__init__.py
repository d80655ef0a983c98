"""``spa demo``: the internet in miniature, built from network namespaces.

``spa.demo.netns`` holds the generic pieces (bounded commands and polls,
namespaces and the processes inside them, cleanup that always completes);
``spa.demo.internet`` builds the world that ``spa demo`` and the end-to-end
tests knock through: a server, a real recursive resolver reaching the knock
zone by delegation, a NAT router with two clients behind it, and a client
on its own public address (docs/world.md). The scenarios run every knock
in it the way a person would.
"""
