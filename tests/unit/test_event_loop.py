"""The worker's event loop on loopback sockets: eviction, partial writes, contained bugs.

Issue 13, HIGH 2: nothing one packet or one connection brings may end the
worker. The loop is driven one turn at a time (Loop.turn), so each test
decides exactly which events are ready together.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import time
from pathlib import Path

import pytest

from spa import config as config_module
from spa.cli import main
from spa.core.ledger import Ledger
from spa.daemon import messages
from spa.daemon.contain import COUNTER, MAX_SITES, Unexpected
from spa.daemon.dns_tcp import OUTBOX_LIMIT, TCP_CLIENTS, TCP_IDLE
from spa.daemon.listeners import Listeners
from spa.daemon.worker import Loop, SupervisorGone, Worker

ZONE = "knock.test"


@pytest.fixture
def worker(tmp_path: Path) -> Worker:
    directory = tmp_path / "srv"
    assert main(["init", "--dir", str(directory), "--protect", "tcp/22", "--zone", ZONE, "--backend", "dry-run"]) == 0
    config = config_module.load(directory / "spa.toml")
    sent: list[messages.Message] = []
    return Worker(config, config_module.load_keyring(config), Ledger(700), sent.append)


@pytest.fixture
def listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    yield sock
    sock.close()


def soa_query(ident: int) -> bytes:
    name = b"".join(bytes([len(part)]) + part.encode() for part in ZONE.split(".")) + b"\x00"
    message = struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0) + name + b"\x00\x06\x00\x01"
    return struct.pack(">H", len(message)) + message


def turns(loop: Loop, until: object, limit: int = 50) -> None:
    """Turn the loop until ``until()`` holds (bounded)."""
    for _ in range(limit):
        if until():  # type: ignore[operator]
            return
        loop.turn(0.05)
    raise AssertionError("the loop never got there")


def connect(listener: socket.socket) -> socket.socket:
    sock = socket.create_connection(listener.getsockname(), timeout=2)
    sock.settimeout(2)
    return sock


def evicted(sock: socket.socket) -> bool:
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:  # closed with our query unread
        return True


def frames(data: bytes) -> list[int]:
    """The DNS ids of the framed answers in ``data``."""
    ids, pos = [], 0
    while pos + 2 <= len(data):
        length = struct.unpack_from(">H", data, pos)[0]
        ids.append(struct.unpack_from(">H", data, pos + 2)[0])
        pos += 2 + length
    assert pos == len(data), "a partial answer"
    return ids


def test_evicting_a_client_whose_query_waits_in_the_same_batch(worker: Worker, listener: socket.socket) -> None:
    loop = Loop(worker, Listeners(dns_tcp=[listener]))
    crowd = []
    for _ in range(TCP_CLIENTS):
        crowd.append(connect(listener))
        time.sleep(0.002)  # distinct deadlines: accepted in this order
        loop.turn(0)
    turns(loop, lambda: len(loop.tcp) == TCP_CLIENTS)
    # Ready together, the newcomer first: its accept evicts crowd[0], whose query is next in the batch.
    stale: list[bool] = []
    event = loop.tcp.event
    loop.tcp.event = lambda client, events: (stale.append(client.closed), event(client, events))  # type: ignore[method-assign]
    newcomer = connect(listener)
    crowd[0].sendall(soa_query(1))
    crowd[1].sendall(soa_query(2))
    loop.turn(0.5)
    assert stale[0] is True  # the evicted client's event did come in the same batch, after the accept
    assert worker.counts[COUNTER] == 0
    assert evicted(crowd[0])  # closed, its query unanswered
    assert frames(crowd[1].recv(4096)) == [2]  # the rest of the batch was served
    newcomer.sendall(soa_query(3))
    turns(loop, lambda: bool(select.select([newcomer], [], [], 0)[0]))
    assert frames(newcomer.recv(4096)) == [3]
    loop.close()
    for sock in [*crowd, newcomer]:
        sock.close()


def test_an_answer_the_kernel_takes_only_part_of_goes_out_when_writable(worker: Worker, listener: socket.socket) -> None:
    loop = Loop(worker, Listeners(dns_tcp=[listener]))
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)  # a reader that takes little at a time
    client.connect(listener.getsockname())
    turns(loop, lambda: len(loop.tcp) == 1)
    (served,) = loop.tcp.clients
    served.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2048)
    burst = b"".join(soa_query(ident) for ident in range(1, 4096 // len(soa_query(0)) + 1))
    client.sendall(burst)
    turns(loop, lambda: bool(served.outbox))  # more answers than the kernel would take at once
    assert len(served.outbox) <= OUTBOX_LIMIT
    received = bytearray()
    client.setblocking(False)
    expected = burst.count(b"\x00\x06\x00\x01")

    def all_in() -> bool:
        try:
            received.extend(client.recv(65536))
        except BlockingIOError:
            pass
        return len(frames_so_far(received)) == expected

    turns(loop, all_in, limit=200)
    assert frames(bytes(received)) == list(range(1, expected + 1))  # every answer, whole and in order
    assert not served.outbox and worker.counts[COUNTER] == 0
    loop.close()
    client.close()


def frames_so_far(data: bytearray) -> list[int]:
    ids, pos = [], 0
    while pos + 2 <= len(data):
        length = struct.unpack_from(">H", data, pos)[0]
        if pos + 2 + length > len(data):
            break
        ids.append(struct.unpack_from(">H", data, pos + 2)[0])
        pos += 2 + length
    return ids


def test_a_client_that_never_reads_its_answers_goes_when_idle(worker: Worker, listener: socket.socket) -> None:
    loop = Loop(worker, Listeners(dns_tcp=[listener]))
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    client.connect(listener.getsockname())
    turns(loop, lambda: len(loop.tcp) == 1)
    (served,) = loop.tcp.clients
    served.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2048)
    client.setblocking(False)
    for ident in range(20_000):  # bounded; stops as soon as the kernel pushes back
        try:
            client.send(soa_query(ident % 65536))
        except BlockingIOError:
            break
        loop.turn(0)
    assert len(served.outbox) <= OUTBOX_LIMIT + 4096  # what we hold for it stays bounded
    loop.tcp.expire(time.time() + TCP_IDLE + 1)
    assert served.closed and len(loop.tcp) == 0
    loop.close()
    client.close()


def test_a_bug_one_packet_hits_is_counted_logged_once_and_survived(
        worker: Worker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    loop = Loop(worker, Listeners(dns_udp=[udp]))
    answer = worker.dns_query

    def buggy(message: bytes, max_size: int = 512) -> object:
        if b"boom" in message:
            raise IndexError("a bug in the parser")
        return answer(message, max_size)

    monkeypatch.setattr(worker, "dns_query", buggy)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(2)
    for _ in range(10):
        client.sendto(b"boom", udp.getsockname())
    client.sendto(soa_query(7)[2:], udp.getsockname())  # after the ten bad ones, in the same batch
    with caplog.at_level(logging.ERROR, logger="spa"):
        turns(loop, lambda: worker.counts[COUNTER] == 10)
    assert struct.unpack_from(">H", client.recv(4096))[0] == 7  # the good query was still answered
    logged = [r for r in caplog.records if "unexpected IndexError" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None  # once, with its traceback
    assert "a DNS query over UDP" in logged[0].getMessage()
    assert worker.stats()[COUNTER] == 10
    loop.close()
    client.close()
    udp.close()


def test_the_counter_is_reported_even_at_zero(worker: Worker) -> None:
    assert worker.stats()[COUNTER] == 0


def test_distinct_bugs_are_each_logged_and_their_number_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    from collections import Counter

    counts: Counter[str] = Counter()
    unexpected = Unexpected(counts, "test")

    def fail(kind: type[Exception], line: int) -> Exception:
        try:
            exec(compile("\n" * line + "raise kind('x')", "<bug>", "exec"), {"kind": kind})
        except Exception as problem:  # noqa: BLE001
            return problem
        raise AssertionError

    with caplog.at_level(logging.ERROR, logger="spa"):
        for _ in range(3):
            unexpected.caught("an event", fail(ValueError, 1))
        unexpected.caught("an event", fail(KeyError, 1))  # another type
        unexpected.caught("an event", fail(ValueError, 2))  # another line
        unexpected.caught("another event", fail(ValueError, 1))  # another event
        for line in range(3, 3 + 2 * MAX_SITES):
            unexpected.caught("an event", fail(ValueError, line))
    assert counts[COUNTER] == 6 + 2 * MAX_SITES
    assert len(caplog.records) == MAX_SITES


def test_a_gone_supervisor_is_not_contained(worker: Worker) -> None:
    loop = Loop(worker, Listeners())

    def gone() -> None:
        raise SupervisorGone("pipe closed")

    with pytest.raises(SupervisorGone):
        loop.contained("the counter report", gone)
    loop.close()
