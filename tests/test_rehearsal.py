"""The fork server's rehearsal (chatd/rehearsal.py) runs a session's core through what
every session does first: the steps must really happen, or it specializes the wrong code."""

from __future__ import annotations

import pytest

from chatd import protocol as p
from chatd import rehearsal
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
    assert not any(type(o).__module__ == "chatd.session" and type(o).__name__ == "Session"
                   for o in gc.get_objects())


def test_an_irc_pass_registers_and_renders() -> None:
    session, out = rehearsal.irc_once(Config())
    assert session.state is State.WELCOMED
    written = b"".join(bytes(chunk) for chunk in out.chunks).decode()
    assert " 001 rehearsal :Welcome" in written and " 376 rehearsal " in written
    # the room messages, with the tags the client asked for
    assert written.count(":someone!~u@") == 3 and "@time=" in written and "msgid=7" in written
    assert [p.decode_payload(f[4:])["type"] for f in session.to_broker] == ["msg"]
