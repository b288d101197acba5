"""Nothing lost, ever (issue 14 §1), against the real server: a direct message sent while
the client had to use `nick_` reaches it once the nick is back, a restarted client catches
up its direct messages, and it comes back with its rooms and buffers."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from serverproc import ServerProcess, kill_quietly
from tuirunner import TUI
from wire import Client, connect

from chat_client.lifecycle import ConnState

FAST_RETRY = {"backoff_base": 0.3, "backoff_cap": 0.6}


def dm_texts(app: TUI, peer: str) -> list[str]:
    def get() -> list[str]:
        buf = app.core.model.get(peer)
        return [ln.text for ln in buf.lines if ln.id is not None] if buf else []

    return list(app.call(get))


@pytest.mark.parametrize("provable", [False, True], ids=["nick_", "takeover"])
def test_a_dm_sent_while_the_nick_was_held_arrives_once_it_is_taken_back(
        server: ServerProcess, tmp_path: Path, provable: bool) -> None:
    """The old session holds the nick: a client that cannot prove it owns that session is
    `dave_` until it ends; one that can takes it over at once (protocol.md §2). Either
    way the direct message sent to the old session arrives, once."""
    erin = connect(server, "erin")
    before = set(server.children())
    dave = TUI(server.host, server.port, "dave", state_dir=tmp_path / "state", keepalive=0.4,
                     dead_after=1.0, **FAST_RETRY)
    stopped: int | None = None
    try:
        dave.ready()
        erin.call({"type": "msg", "to": "dave", "text": "earlier"})
        dave.wait(lambda: dm_texts(dave, "erln") == ["earlier"], "the first DM")
        if not provable:  # as after a restart of the server, which knows no secret of ours
            dave.call(lambda: setattr(dave.core, "resume", None))
        (child,) = set(server.children()) - before
        os.kill(child, signal.SIGSTOP)  # dave's session process: alive, silent
        stopped = child
        # The server takes it for dave (the session still holds the nick): acknowledged.
        assert erin.call({"type": "msg", "to": "dave", "text": "hi"})["type"] == "ack"
        back = "dave" if provable else "dave_"
        dave.wait(lambda: dave.core.model.nick == back
                  and dave.core.model.conn_state is ConnState.CONNECTED, f"back as {back}",
                  timeout=20)
        os.kill(child, signal.SIGCONT)  # the old session goes on, finds its client gone
        stopped = None
        dave.wait(lambda: dave.core.model.nick == "dave", "dave taken back", timeout=20)
        dave.wait(lambda: "hi" in dm_texts(dave, "erln"), "the DM sent to the stopped session")
        erin.call({"type": "msg", "to": "dave", "text": "after"})
        dave.wait(lambda: "after" in dm_texts(dave, "erln"), "a live DM")
        assert dm_texts(dave, "erln") == ["earlier", "hi", "after"]  # each exactly once
    finally:
        if stopped is not None:
            kill_quietly(stopped, signal.SIGCONT)
        dave.close()
        erin.close()


def test_a_restarted_client_catches_up_its_direct_messages(server: ServerProcess,
                                                           tmp_path: Path) -> None:
    state = tmp_path / "state"
    erin = connect(server, "erin")
    dave = TUI(server.host, server.port, "dave", state_dir=state)
    dave.ready()
    erin.call({"type": "msg", "to": "dave", "text": "one"})
    dave.wait(lambda: dm_texts(dave, "erln") == ["one"], "a DM")
    assert dave.close() == 0
    # While this client is closed, dave is someone else's session (another device, or
    # the old session not yet gone): what erin sends to dave is stored for dave.
    other = connect(server, "dave")
    for text in ("two", "three"):
        erin.call({"type": "msg", "to": "dave", "text": text})
    other.close()
    # (If that session has not ended yet, the client starts as dave_ and catches up once
    # it has dave back: keepalive is when it tries.)
    again = TUI(server.host, server.port, "dave", state_dir=state, rooms=(), keepalive=0.4)
    try:
        again.wait(lambda: again.core.model.nick == "dave", "dave", timeout=15)
        again.wait(lambda: dm_texts(again, "erln")[-2:] == ["two", "three"], "caught up",
                   timeout=15)
        texts = dm_texts(again, "erln")
        assert texts.count("two") == 1 and texts.count("three") == 1
    finally:
        again.close()
        erin.close()


def test_a_restart_brings_back_rooms_buffers_and_the_current_one(server: ServerProcess,
                                                                 bob: Client,
                                                                 tmp_path: Path) -> None:
    state = tmp_path / "state"
    rooms = [f"#room{n}" for n in range(10)]
    bob.join("#room3")
    alice = TUI(server.host, server.port, "alice", state_dir=state)
    alice.ready()
    for room in rooms:
        alice.type(f"/join {room}\r")
    alice.wait(lambda: all(alice.core.model.get(r) and alice.core.model.get(r).joined  # type: ignore[union-attr]
                           for r in rooms), "ten rooms")
    alice.type("/msg bob psst\r")
    bob.wait_type("message", to="bob", text="psst")
    alice.type("/switch #room4\r")
    alice.wait(lambda: alice.core.model.current == "#room4", "#room4")
    order = alice.call(lambda: [b.key for b in alice.core.model.order()])
    assert alice.close() == 0
    bob.say("#room3", "while you were away")
    again = TUI(server.host, server.port, "alice", state_dir=state, rooms=())
    try:
        again.wait(lambda: again.core.ready and again.core.model.current == "#room4",
                   "restored")
        assert again.call(lambda: [b.key for b in again.core.model.order()]) == order
        assert all(again.call(lambda: [again.core.model.get(r).joined for r in rooms]))  # type: ignore[union-attr]
        again.wait(lambda: "while you were away" in again.call(
            lambda: [ln.text for ln in again.core.model.get("#room3").lines]), "caught up")  # type: ignore[union-attr]
        assert again.call(lambda: again.core.model.get("bob").kind) == "dm"  # type: ignore[union-attr]
    finally:
        again.close()


def test_a_room_that_was_empty_gets_everything_missed_after_a_restart(
        server: ServerProcess, bob: Client, tmp_path: Path) -> None:
    # The room had no message when alice joined it, so its catch-up point is 0; more was
    # said while the client was closed than a join shows (history_on_join, 50).
    state = tmp_path / "state"
    alice = TUI(server.host, server.port, "alice", state_dir=state, rooms=("#general", "#new"))
    alice.ready()
    alice.wait(lambda: alice.core.ready, "joined")
    assert alice.close() == 0
    bob.join("#new")
    for n in range(60):
        bob.say("#new", f"missed {n}")
    again = TUI(server.host, server.port, "alice", state_dir=state, rooms=())
    try:
        again.wait(lambda: again.core.ready, "restored")

        def texts() -> list[str]:
            buf = again.core.model.get("#new")
            return [ln.text for ln in buf.lines if ln.id is not None] if buf else []

        again.wait(lambda: len(texts()) == 60, "all 60 missed messages", timeout=15)
        assert texts() == [f"missed {n}" for n in range(60)]
        assert again.call(lambda: again.core.model.get("#new").unread) == 60  # type: ignore[union-attr]
    finally:
        again.close()
