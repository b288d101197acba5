"""The fork server's rehearsal (chatd/rehearsal.py) runs a session's core through what
every session does first: the steps must really happen, or it specializes the wrong code."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from chatd import channel, rehearsal
from chatd import protocol as p
from chatd.config import Config
from chatd.session import State

pytestmark = pytest.mark.timeout(30)


def test_a_pass_welcomes_joins_and_delivers() -> None:
    session, delivered = rehearsal.once(Config(), rehearsal.client_frames(),
                                        rehearsal.parent_stream())
    assert session.state is State.WELCOMED and session.nick == "rehearsal"
    # hello and join went to the broker at once; the message waited for the join's DONE
    sent = [p.decode_payload(frame[4:])["type"] for frame in session.to_broker]
    assert sent == ["hello", "join", "msg"]
    assert session.catchup_inflight == 0
    assert [p.decode_payload(frame[4:])["type"] for frame in session.to_client] == ["pong"]
    assert delivered.last == 7  # the catch-up's message, read as a session reads it
    assert not session.ended


def test_rehearsing_leaves_nothing_behind() -> None:
    import gc

    rehearsal.rehearse(Config(), rounds=3)
    gc.collect()
    made = {("chatd.session", "Session"), ("chatd.irc.frontend", "IrcFrontEnd"),
            ("chatd.outbox", "Outbox"), ("chatd.frontends", "IrcCodec")}
    assert not [o for o in gc.get_objects() if (type(o).__module__, type(o).__name__) in made]


def test_an_irc_pass_registers_and_renders() -> None:
    session, out = rehearsal.irc_once(Config())
    assert session.state is State.WELCOMED
    written = b"".join(bytes(chunk) for chunk in out.chunks).decode()
    assert " 001 rehearsal :Welcome" in written and " 376 rehearsal " in written
    # the room messages, with the tags the client asked for; the echo of its own PRIVMSG
    # and the PONG came first (nothing left waiting: the per-delivery path was the one run)
    assert written.count(":someone!~u@") == 3 and "@time=" in written and "msgid=9" in written
    assert "msgid=8 :rehearsal!~u@" in written and " PONG " in written
    assert written.index(" PONG ") < written.index(":someone!")
    assert not session.to_broker


def test_the_irc_pass_takes_the_per_delivery_fast_path() -> None:
    from chatd.irc import render

    calls = []
    original = render.message_line
    render.message_line = lambda *a, **k: calls.append(1) or original(*a, **k)  # type: ignore
    try:
        rehearsal.irc_once(Config())
    finally:
        render.message_line = original  # type: ignore
    assert len(calls) >= 3


@pytest.mark.parametrize("burst", [1, 2, 3])
def test_a_tight_rate_limit_does_not_stop_the_rehearsal(burst: int) -> None:
    config = Config()
    config = config.with_values({**config.values, "cmd_burst": burst, "msg_burst": burst})
    rehearsal.rehearse(config, rounds=2)  # (the fork server's start: it must not raise)
    session, _out = rehearsal.irc_once(config)  # unlifted, a refused registration ends early
    assert session.state is not State.WELCOMED


def test_the_rehearsal_is_quiet_and_leaves_the_log_as_it_was(
        caplog: pytest.LogCaptureFixture) -> None:
    import logging

    with caplog.at_level(logging.DEBUG):
        rehearsal.rehearse(Config(), rounds=1)
    assert not caplog.records
    assert logging.root.manager.disable == logging.NOTSET


def frames_of(data: bytes) -> list[dict[str, Any]]:
    decoder = p.FrameDecoder()
    decoder.receive_data(data)
    return [p.decode_payload(payload) for payload in decoder.payloads()]


def test_a_loop_pass_serves_a_native_client_until_the_close_order() -> None:
    (server, client), = rehearsal.connections(1)
    got = rehearsal.loop_once(rehearsal.lifted(Config()), server, client, irc=False)
    assert [f["type"] for f in frames_of(got)] == ["welcome", "message", "message", "pong",
                                                   "error"]
    assert frames_of(got)[-1]["code"] == "shutting_down"
    assert server.fileno() == client.fileno() == -1  # (the Loop closed its end, we ours)


def test_a_loop_pass_serves_an_irc_client_through_its_welcome_and_echo() -> None:
    (server, client), = rehearsal.connections(1)
    got = rehearsal.loop_once(rehearsal.lifted(Config()), server, client, irc=True).decode()
    assert " 001 rehearsal :Welcome" in got and " 376 rehearsal " in got
    # the hello's and the PRIVMSG's answers found their commands (labels 1 and 2)
    assert "msgid=8 :rehearsal!~u@" in got and " PONG " in got
    assert got.count(":someone!~u@") == 2 and got.endswith("(the server is stopping)\r\n")


def test_rehearse_serves_every_loop_and_closes_every_connection() -> None:
    loops = rehearsal.connections(4)
    assert rehearsal.rehearse(Config(), rounds=1, loops=loops) == 4
    assert all(s.fileno() == -1 for pair in loops for s in pair)


def test_a_loop_whose_script_never_ends_it_ends_by_itself() -> None:
    """The close order is what ends a rehearsed Loop; were it ever missing, the lifted
    config's keepalive ends it (its client never answers a ping), so the fork server's
    start is held up seconds at worst, never for good."""
    from chatd.channel import EnvelopeReader
    from chatd.sessionloop import Loop

    (server, client), = rehearsal.connections(1)
    config = rehearsal.lifted(Config())
    ours, theirs = socket.socketpair()
    with ours, theirs, client:
        client.sendall(rehearsal.client_frames())
        stream = rehearsal.loop_stream(config, irc=False)
        ours.sendall(stream[:stream.rindex(channel.control(channel.close("shutting_down")))])
        Loop(server, theirs, config, "127.0.0.1", EnvelopeReader(), [], time.monotonic()).serve()
        client.settimeout(5.0)
        got = b""
        while chunk := client.recv(65536):
            got += chunk
    kinds = [(f["type"], f.get("code")) for f in frames_of(got)]
    assert kinds[-2:] == [("ping", None), ("error", "ping_timeout")]


def test_a_strangers_connection_to_the_rehearsals_listener_is_closed_unread() -> None:
    """Anyone on the host may connect to the loopback listener while the fork server
    makes its connections: the fork server must never serve what a stranger sends."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        stranger = socket.create_connection(listener.getsockname())
        stranger.sendall(rehearsal.client_frames())
        ours = [socket.create_connection(listener.getsockname()) for _ in range(3)]
        made = rehearsal.pair_up(listener, {c.getsockname(): c for c in ours})
        assert [(s.getpeername(), c) for s, c in made] == [(c.getsockname(), c) for c in ours]
        stranger.settimeout(5.0)
        with pytest.raises(ConnectionResetError):  # closed with its bytes unread
            stranger.recv(1)
        for pair in made:
            for sock in pair:
                sock.close()
        stranger.close()


def test_a_listener_kept_busy_by_strangers_gives_no_connections() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        strangers = [socket.create_connection(listener.getsockname()) for _ in range(5)]
        ours = socket.create_connection(listener.getsockname())
        with pytest.raises(OSError):
            rehearsal.pair_up(listener, {ours.getsockname(): ours})
        for sock in (*strangers, ours):
            sock.close()
