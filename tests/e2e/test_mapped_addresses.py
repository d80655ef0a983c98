"""Issue 13, finding 6: an IPv4-mapped address must not walk around ``sources``.

alice's key may open only addresses in 10.77.1.0/24 over IPv4 (any IPv6
address is fine). She names bob's address as ``::ffff:10.77.2.2``: policy
used to judge it as IPv6 (inside ``::/0``) while the firewall turned it
into 10.77.2.2 and opened bob. Her knocks are built here with the library
(the clients refuse to build them) and sent from her namespace by a plain
socket, so the bytes are exactly what a hostile key holder would send.
"""

from __future__ import annotations

import ipaddress
import shutil
import time

import pytest
from dnslib import DNSRecord
from world import need_netns
from world.daemon import ZONE
from world.knocking import SERVER, Knocking, prepare

from spa.client import tokens
from spa.core import compact, datagram, encoding, kdf
from spa.core.events import Request

pytestmark = pytest.mark.netns

PYTHON = shutil.which("python3") or "python3"
BOB_MAPPED = ipaddress.ip_address("::ffff:10.77.2.2")
SEND = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.sendto(bytes.fromhex(sys.argv[1]), (sys.argv[2], int(sys.argv[3])))\n"
)


@pytest.fixture
def knocking(request: pytest.FixtureRequest) -> Knocking:
    need_netns("nft", "python3", libraries=("nftables",))
    k = prepare(request)
    store = k.served.directory / "keys" / "alice.toml"
    text = store.read_text()
    table = "[policy]" if "[policy]" in text else None
    sources = 'sources = ["10.77.1.0/24", "::/0"]'
    store.write_text(text.replace("[policy]", f"[policy]\n{sources}", 1) if table else f"{text}\n[policy]\n{sources}\n")
    k.served.start()
    return k


def send_from_alice(k: Knocking, payload: bytes, port: int) -> None:
    k.world.alice.run([PYTHON, "-I", "-S", "-c", SEND, payload.hex(), SERVER, str(port)], timeout=10)


def bob_stays_out(k: Knocking) -> None:
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:  # a grant lands within milliseconds; watch a while
        assert k.probe(k.bob) == "refused", "a mapped address opened bob's IPv4 address:\n" + k.served.log()
        time.sleep(0.1)


def alice_still_gets_in(k: Knocking) -> None:
    """The daemon heard and judged the bad knock and is still serving: a good one works."""
    key = k.key
    send_from_alice(k, tokens.spa_datagram(key, int(time.time()), source=ipaddress.ip_address("10.77.1.2")),
                    key.udp_port)
    assert k.opens(), k.served.log()
    assert "accepted alice" in k.served.log() and str(BOB_MAPPED) not in k.served.log().split("accepted")[-1]


def test_a_datagram_naming_a_mapped_address_opens_nothing(knocking: Knocking) -> None:
    k = knocking
    key = k.key
    assert key.secret is not None
    body = datagram.Body(datagram.Mode.IPV6, (Request("tcp", 22),), 0, BOB_MAPPED)
    packet = datagram.seal(compact.Obfuscator(key.obfuscation_key), key.key_id, int(time.time()), body,
                           aead_key=kdf.derive(key.secret, kdf.DATAGRAM_AEAD))
    send_from_alice(k, packet, key.udp_port)
    bob_stays_out(k)
    alice_still_gets_in(k)


def test_an_extended_dns_token_naming_a_mapped_address_opens_nothing(knocking: Knocking) -> None:
    k = knocking
    key = k.key
    assert key.secret is not None
    token = compact.seal_extended(compact.Obfuscator(key.obfuscation_key), kdf.derive(key.secret, kdf.TOKEN_MAC),
                                  key.key_id, int(time.time()), 0, BOB_MAPPED)
    query = DNSRecord.question(f"{encoding.to_label(token)}.{ZONE}").pack()
    send_from_alice(k, query, 53)
    bob_stays_out(k)
    alice_still_gets_in(k)
