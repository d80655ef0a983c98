"""The raw netlink grant batch, decoded back field by field (no root, no kernel).

The e2e tests (tests/e2e/test_firewall_nftables.py) prove the kernel takes
these bytes and that nft reads back what the text path would have written.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spa.core.events import Request
from spa.firewall import FirewallError, netlink


def messages(data: bytes) -> list[tuple[int, int, int, int, bytes]]:
    """(type, flags, seq, nfgen family, attributes) of each message in a batch."""
    found, offset = [], 0
    while offset < len(data):
        length, kind, flags, seq, _pid = struct.unpack_from("=IHHII", data, offset)
        assert length >= 20 and length % 4 == 0
        family = data[offset + 16]
        found.append((kind, flags, seq, family, data[offset + 20: offset + length]))
        offset += length
    assert offset == len(data)
    return found


def attributes(data: bytes) -> dict[int, bytes]:
    found, offset = {}, 0
    while offset < len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        assert length >= 4
        found[kind & ~netlink.NLA_F_NESTED] = data[offset + 4: offset + length]
        offset += (length + 3) & ~3
    return found


def test_element_keys_pad_each_field_to_a_register() -> None:
    ssh = Request("tcp", 22)
    assert netlink.element_key(ipaddress.ip_address("198.51.100.7"), ssh) == bytes(
        [198, 51, 100, 7, 6, 0, 0, 0, 0, 22, 0, 0])
    v6 = netlink.element_key(ipaddress.ip_address("2001:db8::7"), Request("udp", 3389))
    assert len(v6) == 24 and v6[16:] == bytes([17, 0, 0, 0, 0x0D, 0x3D, 0, 0])
    with pytest.raises(FirewallError, match="IPv4-mapped"):  # refused, never converted
        netlink.element_key(ipaddress.ip_address("::ffff:198.51.100.7"), ssh)


def test_a_grant_is_add_delete_add_inside_one_batch() -> None:
    key = netlink.element_key(ipaddress.ip_address("198.51.100.7"), Request("tcp", 22))
    batch = netlink.grant_batch("inet", "spa_grant", "grants4", key, 30, "alice/udp", 1000)
    found = messages(batch.data)
    kinds = [kind for kind, *_ in found]
    new, delete = (10 << 8) | netlink.NFT_MSG_NEWSETELEM, (10 << 8) | netlink.NFT_MSG_DELSETELEM
    assert kinds == [netlink.NFNL_MSG_BATCH_BEGIN, new, delete, new, netlink.NFNL_MSG_BATCH_END]
    assert [seq for _, _, seq, _, _ in found] == [1000, 1001, 1002, 1003, 1004]
    assert batch.acks == (1001, 1002, 1003)
    for kind, flags, _seq, family, body in found[1:4]:
        assert family == 1 and flags & netlink.NLM_F_ACK  # inet; every change acknowledged
        assert bool(flags & netlink.NLM_F_CREATE) == (kind == new)
        fields = attributes(body)
        assert fields[netlink.NFTA_SET_ELEM_LIST_TABLE] == b"spa_grant\0"
        assert fields[netlink.NFTA_SET_ELEM_LIST_SET] == b"grants4\0"
        element = attributes(attributes(fields[netlink.NFTA_SET_ELEM_LIST_ELEMENTS])[netlink.NFTA_LIST_ELEM])
        assert attributes(element[netlink.NFTA_SET_ELEM_KEY])[netlink.NFTA_DATA_VALUE] == key
        if kind == new:
            assert struct.unpack("!Q", element[netlink.NFTA_SET_ELEM_TIMEOUT]) == (30_000,)
            assert element[netlink.NFTA_SET_ELEM_USERDATA] == bytes([0, 10]) + b"alice/udp\0"
        else:
            assert set(element) == {netlink.NFTA_SET_ELEM_KEY}
    # Batch delimiters name the nf_tables subsystem in res_id (big-endian).
    assert found[0][4] == b"" and messages(batch.data[:20])[0][0] == netlink.NFNL_MSG_BATCH_BEGIN
    assert struct.unpack_from("!H", batch.data, 18) == (netlink.NFNL_SUBSYS_NFTABLES,)


def error_reply(seq: int, error: int) -> bytes:
    return struct.pack("=IHHIIi", 36, netlink.NLMSG_ERROR, 0, seq, 0, -error) + bytes(16)


def test_acknowledgements_report_each_error_and_refuse_truncation() -> None:
    replies = error_reply(7, 0) + error_reply(8, 2)
    assert list(netlink.acknowledgements(replies)) == [(7, 0), (8, 2)]
    with pytest.raises(netlink.NetlinkError):
        list(netlink.acknowledgements(replies[:-4]))
    assert list(netlink.acknowledgements(b"")) == []


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256))
def test_arbitrary_replies_parse_or_raise_netlink_error(data: bytes) -> None:
    try:
        for seq, error in netlink.acknowledgements(data):
            assert isinstance(seq, int) and isinstance(error, int)
    except netlink.NetlinkError:
        pass
