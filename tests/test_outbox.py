"""The session process's outboxes (chatd/outbox.py): every byte goes out once and in order
however little the socket takes at a time, a discard keeps the stream frame-aligned, and
the outbox towards the client never lets the stream end mid-frame.
"""

from __future__ import annotations

import socket
import struct

import pytest
from fakesock import TrickleSocket
from hypothesis import given, settings
from hypothesis import strategies as st

from chatd.outbox import IOV_MAX, LINGER_OFF, LINGER_RESET, RESIDENT, ClientOutbox, Outbox, Receiver
from chatd.protocol import FrameDecoder, pack

CHUNKS = st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=30)


def check(box: Outbox, total: int, out: int) -> None:
    """What an outbox says about itself agrees with what went out."""
    assert box.size == total - out == sum(map(len, box.chunks)) - box.offset
    assert (box.offset == 0) if not box.chunks else (0 <= box.offset < len(box.chunks[0]))


def send_all(box: Outbox, sock: TrickleSocket, total: int) -> bytes:
    """Call send() until the outbox is empty, the peer reading after each call."""
    got = bytearray()
    for _ in range(total + 1):  # each call sends at least a byte: no more calls than bytes
        if not box.chunks:
            break
        box.send(sock)  # type: ignore[arg-type]
        got += sock.drain()
        check(box, total, len(got))
    assert not box.chunks, "the outbox made no progress"
    return bytes(got)


@settings(max_examples=300, deadline=None)
@given(CHUNKS, st.integers(1, 50), st.lists(st.booleans(), min_size=30, max_size=30))
def test_every_byte_goes_out_once_in_order_however_little_the_socket_takes(
        chunks: list[bytes], k: int, views: list[bool]) -> None:
    box = Outbox()
    for chunk, view in zip(chunks, views, strict=False):
        box.add(memoryview(chunk)[:] if view else chunk)  # the loop queues both
    total = sum(map(len, chunks))
    check(box, total, 0)
    assert send_all(box, TrickleSocket(k), total) == b"".join(chunks)
    assert box.size == box.offset == 0


@settings(max_examples=300, deadline=None)
@given(CHUNKS, st.integers(1, 50), st.integers(1, 80))
def test_pushes_between_sends_go_out_once_in_order(chunks: list[bytes], k: int,
                                                    room: int) -> None:
    """push() (the parent's way: one send into an empty box) keeps the same accounts as
    add() and send(), whatever the socket takes, full or not."""
    box, sock = Outbox(), TrickleSocket(k, room=room)
    got = bytearray()
    for i, chunk in enumerate(chunks):
        box.push(chunk, sock)  # type: ignore[arg-type]
        if i % 3 == 2:
            got += sock.drain()
        check(box, sum(map(len, chunks[:i + 1])), len(got) + len(sock.wire))
    total = sum(map(len, chunks))
    got += sock.drain()
    assert bytes(got) + send_all(box, sock, total - len(got)) == b"".join(chunks)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=12), st.integers(1, 64),
       st.integers(0, 40))
def test_a_discard_keeps_a_partly_sent_head_so_the_stream_stays_frame_aligned(
        sizes: list[int], k: int, calls: int) -> None:
    frames = [pack({"type": "message", "text": "x" * n}) for n in sizes]
    box, sock = Outbox(), TrickleSocket(k)
    for f in frames:
        box.add(f)
    for _ in range(calls):  # some of it goes out, perhaps a frame in part
        box.send(sock)  # type: ignore[arg-type]
    partial = box.offset
    box.discard()  # the peer is a slow consumer: drop what is queued
    assert len(box.chunks) == (1 if partial else 0) and box.offset == partial
    assert box.size == sum(map(len, box.chunks)) - box.offset
    for _ in range(sum(map(len, frames))):
        if not box.chunks:
            break
        box.send(sock)  # type: ignore[arg-type]
    got = sock.drain()
    decoder = FrameDecoder(1 << 20)
    decoder.receive_data(got)
    n = len(list(decoder.payloads()))
    assert decoder.buffered == 0 and got == b"".join(frames[:n])


def test_after_a_discard_size_counts_only_what_is_unsent() -> None:
    box, sock = Outbox(), TrickleSocket(3)
    box.add(b"abcdefgh")
    box.add(b"ijk")
    box.send(sock)  # type: ignore[arg-type]
    box.discard()
    assert box.size == sum(map(len, box.chunks)) - box.offset == 5


def test_a_full_socket_leaves_the_outbox_as_it_was() -> None:
    box, sock = Outbox(), TrickleSocket(8, room=8)
    box.add(b"a" * 5)
    box.add(b"b" * 5)
    box.send(sock)  # type: ignore[arg-type]
    assert (box.offset, box.size, sock.wire) == (3, 2, bytearray(b"aaaaabbb"))
    box.send(sock)  # nothing fits: BlockingIOError inside, nothing changes
    assert (box.offset, box.size, len(box.chunks)) == (3, 2, 1)
    assert sock.drain() == b"aaaaabbb"
    box.send(sock)  # type: ignore[arg-type]
    assert sock.drain() == b"bb" and not box.chunks and box.size == 0


def test_more_chunks_than_iov_max_go_out_in_several_calls() -> None:
    chunks = [bytes([i % 256]) for i in range(2 * IOV_MAX + 3)]
    box, sock = Outbox(), TrickleSocket(10**6)
    for c in chunks:
        box.add(c)
    assert send_all(box, sock, len(chunks)) == b"".join(chunks)
    assert sock.sends == 3  # the fake refuses more than IOV_MAX buffers a call


def test_the_client_outbox_sets_linger_once_per_change() -> None:
    box, sock = ClientOutbox(), TrickleSocket(4)
    box.add(pack({"type": "a"}) + pack({"type": "b"}))
    box.send(sock)  # type: ignore[arg-type]  # a frame in part: a close must reset
    box.send(sock)  # type: ignore[arg-type]  # still in part: no second call
    assert [v for *_, v in sock.options] == [LINGER_RESET]
    sock.drain()
    send_all(box, sock, box.size)  # whole frames out: a close ends the stream cleanly
    assert [v for *_, v in sock.options] == [LINGER_RESET, LINGER_OFF]


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """(server side, non-blocking with a small send buffer; client side, small receive
    buffer, never read until the test says so)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(listener.getsockname())
        server, _ = listener.accept()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    server.setblocking(False)
    client.settimeout(10)
    return server, client


def linger(sock: socket.socket) -> tuple[int, int]:
    return struct.unpack("ii", sock.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8))


def test_closing_while_a_frame_is_half_sent_resets_the_connection() -> None:
    server, client = tcp_pair()
    box = ClientOutbox()
    box.add(pack({"type": "message", "text": "x" * 1_000_000}))  # far more than the buffers
    box.send(server)
    assert box.offset, "the frame should be partly sent"
    assert linger(server) == (1, 0)
    server.close()  # what a crash or kill -9 of the session process does
    got = 0
    with pytest.raises(ConnectionResetError):
        while client.recv(65536):
            got += 1
    assert got  # what arrived before the reset is still readable
    client.close()


def test_once_whole_frames_are_sent_the_stream_ends_cleanly() -> None:
    server, client = tcp_pair()
    box = ClientOutbox()
    frame = pack({"type": "message", "text": "x" * 100_000})
    box.add(frame)
    box.send(server)
    assert box.offset and linger(server) == (1, 0)
    decoder = FrameDecoder(1 << 20)
    while box.chunks:  # the client reads; the rest goes out
        decoder.receive_data(client.recv(65536))
        box.send(server)
    assert linger(server)[0] == 0
    server.close()
    while data := client.recv(65536):
        decoder.receive_data(data)
    assert len(list(decoder.payloads())) == 1 and decoder.buffered == 0
    client.close()


@pytest.mark.timeout(10)
@pytest.mark.parametrize("size", [100, RESIDENT + 5000])
def test_what_an_outbox_keeps_of_a_receivers_buffer_survives_the_next_read(
        size: int) -> None:
    """A Receiver's reads are views of one buffer: settle() copies what is kept of them
    out before the next read overwrites it (also after a large read's pages go back)."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        receive, box = Receiver(), Outbox()
        first = bytes(range(256)) * (size // 256 + 1)
        theirs.sendall(first[:size])
        data = receive.read(ours)
        assert data is not None and bytes(data) == first[:size]
        box.add(data[1:])
        receive.settle(box, len(data))
        theirs.sendall(b"\xff" * size)
        again = receive.read(ours)
        assert again is not None and bytes(again) == b"\xff" * size
        assert b"".join(map(bytes, box.chunks)) == first[1:size]
        theirs.close()
        assert receive(ours) == b""
