"""Issue 13 (low): ``--ip auto`` must not believe a STUN answer from someone else.

An on-path attacker sees our binding request (and its transaction id) and
races the server with an answer naming an address of its choice: the knock
would then open that address. Only an answer from the server asked counts,
and only for an address a grant could open. Loopback sockets only.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading

from spa.client import stun

TRUE = ipaddress.ip_address("198.51.100.7")
FORGED = ipaddress.ip_address("203.0.113.66")


def success(transaction: bytes, address: ipaddress.IPv4Address) -> bytes:
    key = struct.pack("!I", stun.MAGIC_COOKIE) + transaction
    value = bytes([0, 1]) + bytes(2) + bytes(a ^ b for a, b in zip(address.packed, key, strict=False))
    attribute = struct.pack("!HH", stun.XOR_MAPPED_ADDRESS, len(value)) + value
    return struct.pack("!HHI12s", stun.BINDING_SUCCESS, len(attribute), stun.MAGIC_COOKIE, transaction) + attribute


def test_a_forged_answer_from_another_socket_is_ignored() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as forger:
        server.bind(("127.0.0.1", 0))
        forger.bind(("127.0.0.1", 0))
        server.settimeout(5)

        def answer() -> None:
            request, client = server.recvfrom(2048)
            transaction = request[8:20]
            forger.sendto(success(transaction, FORGED), client)  # first, with the right transaction id
            forger.sendto(success(transaction, ipaddress.ip_address("0.0.0.0")), client)
            server.sendto(success(transaction, TRUE), client)

        thread = threading.Thread(target=answer)
        thread.start()
        try:
            found = stun.public_address([f"127.0.0.1:{server.getsockname()[1]}"], timeout=3, tries=1)
        finally:
            thread.join(10)
        assert found == TRUE, f"believed {found}, an answer that did not come from the STUN server"


def test_answers_that_name_no_single_host_are_refused() -> None:
    transaction = bytes(range(12))
    asked = ("192.0.2.1", 3478)
    assert stun.answer_from(asked, asked, success(transaction, TRUE), transaction) == TRUE
    assert stun.answer_from(asked, ("192.0.2.1", 3479), success(transaction, TRUE), transaction) is None
    assert stun.answer_from(asked, ("192.0.2.2", 3478), success(transaction, TRUE), transaction) is None
    assert stun.answer_from(asked, asked, success(bytes(12), TRUE), transaction) is None
    for bad in ("0.0.0.0", "224.0.0.1"):
        assert stun.answer_from(asked, asked, success(transaction, ipaddress.ip_address(bad)), transaction) is None
    # A dual-stack socket may report the IPv4 server in mapped form: still the server asked.
    assert stun.answer_from(asked, ("::ffff:192.0.2.1", 3478, 0, 0), success(transaction, TRUE), transaction) == TRUE
