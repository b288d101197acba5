"""The session process's outbox towards its client never lets the stream end mid-frame."""

from __future__ import annotations

import socket
import struct

import pytest

from chatd.outbox import ClientOutbox
from chatd.protocol import FrameDecoder, pack


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
