"""``spa serve``: a privileged supervisor and an unprivileged worker.

The supervisor (root) opens the sockets and the firewall, then forks the
worker, which drops to an unprivileged user before it reads a single packet.
The worker parses, decides with the gate and hands each grant back over a
pipe; the supervisor checks it against policy again and applies it. Only
the supervisor can touch the firewall; only the worker touches packets.
"""
