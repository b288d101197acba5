"""The session process's codecs (chatd/frontends.py), sans I/O: the native fast path,
and the IRC codec's wiring of IrcFrontEnd to the Session as chatd/irc's notes ask."""

from __future__ import annotations

import select
import socket
from typing import Any

import pytest

from chatd import channel
from chatd import protocol as p
from chatd.channel import EnvelopeReader
from chatd.config import Config
from chatd.frontends import IrcCodec, NativeCodec, irc_refusal
from chatd.irc import parse
from chatd.outbox import ClientOutbox
from chatd.session import Session
from chatd.sessionloop import Loop


def requests(session: Session) -> list[dict[str, Any]]:
    """What the Session sent up to the broker (taken)."""
    decoder = p.FrameDecoder(1 << 24)
    decoder.receive_data(b"".join(session.to_broker))
    session.to_broker.clear()
    return [p.decode_payload(payload) for payload in decoder.payloads()]


def lines(out: ClientOutbox) -> list[str]:
    data = b"".join(bytes(chunk) for chunk in out.chunks)
    out.discard()
    return [str(parse(raw).command) for raw in data.split(b"\r\n")[:-1]]


def test_the_native_loop_hands_raw_frames_to_the_outbox_itself() -> None:
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    try:
        native = Loop(a, c, Config(), "peer", EnvelopeReader(), [], 0.0)
        assert isinstance(native.codec, NativeCodec)
        assert native.forward_raw == native.to_client.add  # no call of ours per frame
        irc = Loop(b, d, Config(), "peer", EnvelopeReader(), [], 0.0, irc=True)
        assert isinstance(irc.codec, IrcCodec) and irc.forward_raw is None
        body = memoryview(p.pack({"type": "message", "id": 1, "room": "#a", "from": "x",
                                  "text": "hi", "action": False, "ts": 0}))
        native.on_envelopes([(channel.RAW, body)], 1000)
        assert native.to_client.chunks[-1] is body  # forwarded uncopied
    finally:
        for sock in (a, b, c, d):
            sock.close()


def test_irc_codec_registers_through_the_session_and_answers_in_irc() -> None:
    session, out = Session(Config(), 0), ClientOutbox()
    codec = IrcCodec(session, out, 0)
    codec.client_data(b"NICK alice\r\nUSER alice 0 * :Alice\r\n", 1000)
    (hello,) = requests(session)
    assert (hello["type"], hello["nick"]) == ("hello", "alice")
    # The broker's answer: the welcome control for the Session, the frame through RAW.
    session.control(channel.welcome("alice"))
    welcome = {"type": "welcome", "version": p.VERSION, "server": "chatd", "session": "t",
               "nick": "alice", "motd": "hi", "time": 0, "limits": Config().limits(),
               "label": hello["label"]}
    codec.raw(memoryview(p.pack(welcome)), 1100)
    assert lines(out)[:5] == ["001", "002", "003", "004", "005"]


def test_every_client_read_is_a_sign_of_life_and_quit_ends_the_session() -> None:
    session, out = Session(Config(), 0), ClientOutbox()
    codec = IrcCodec(session, out, 0)
    codec.client_data(b"", 7000)  # no line: still the client's sign of life
    assert session.last_rx == 7000 and codec.take_fed()
    codec.client_data(b"QUIT :bye\r\n", 8000)
    assert lines(out) == ["ERROR"] and session.ended


def test_the_session_s_own_fatal_error_is_the_error_line() -> None:
    session, out = Session(Config(), 0), ClientOutbox()
    codec = IrcCodec(session, out, 0)
    session.fail("handshake_timeout")
    codec.drain(1000)
    data = b"".join(bytes(chunk) for chunk in out.chunks)
    assert data.startswith(b"ERROR :Closing link: chatd (") and data.endswith(b")\r\n")


def test_the_parent_s_refusal_line() -> None:
    assert irc_refusal("chatd", "max_sessions=5 reached") == \
        b"ERROR :Closing link: chatd (max_sessions=5 reached)\r\n"
    # A server name that is no host name is not put on the wire as it is.
    assert irc_refusal("my chat\r\n", "x\r\nQUIT").startswith(b"ERROR :Closing link: chatd (")
    assert irc_refusal("my chat\r\n", "x\r\nQUIT").count(b"\r\n") == 1


def test_quit_before_registration_ends_the_session_too() -> None:
    session, out = Session(Config(), 0), ClientOutbox()
    codec = IrcCodec(session, out, 0)
    codec.client_data(b"CAP LS 302\r\nQUIT\r\n", 1000)
    assert lines(out)[-1] == "ERROR" and session.ended


def test_a_paused_irc_session_reads_nothing_until_the_client_hangs_up(
        monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    try:
        loop = Loop(a, c, Config(), "peer", EnvelopeReader(), [], 0.0, irc=True)
        monkeypatch.setattr(IrcCodec, "paused", property(lambda self: True))
        loop.ep.register(a.fileno(), select.EPOLLIN)
        loop.watch()
        assert loop.sock_mask == 0  # commands wait for answers: the input waits unread
        b.sendall(b"PING :x\r\n")
        assert loop.ep.poll(0.05) == []
        b.close()  # the client hangs up: that is reported whatever the mask
        ((fd, ev),) = loop.ep.poll(1.0)
        loop.on_client(ev, 1000)
        loop.on_client(ev, 1000)  # the line first, then the end of the stream
        assert not loop.client_open and loop.session.ended == "closed"
    finally:
        loop.ep.close()
        for sock in (a, c, d):
            sock.close()
