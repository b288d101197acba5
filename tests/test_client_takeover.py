"""chat-client takes its half-open session over (protocol.md §2, "Taking over a session"):
in virtual time against an in-memory stream, in its state file, and against the real
server with the session process stopped (the link silently dead)."""

from __future__ import annotations

import logging
import os
import signal
import stat
from pathlib import Path

import pytest
from fakeconn import FakeStream
from serverproc import FAST, ServerProcess, kill_quietly
from test_client_connection import Rig, run
from test_client_reconnect import send, wait_ids
from tuirunner import TUI
from wire import connect

from chat_client.buffer import SERVER
from chat_client.lifecycle import ConnState, TakenOver
from chat_client.store import ClientState, StateStore, parse

SECRET = "9d3c1f0b5e7a42c68f1e0d2b4a6c8e10"


def test_a_reconnect_claims_the_old_session_and_says_it_is_back() -> None:
    async def test() -> None:
        first, second = FakeStream(), FakeStream()
        rig = Rig(first, second, rooms=("#a",))
        rig.start()
        await rig.until(lambda: first.sent("hello"))
        assert "resume" not in first.sent("hello")[0]
        first.welcome(session="s1", resume=SECRET)
        await rig.until(lambda: rig.conn.state is ConnState.CONNECTED)
        first.close()
        await rig.until(lambda: second.sent("hello"))
        hello = second.sent("hello")[0]
        assert (hello["session"], hello["resume"], hello["nick"]) == ("s1", SECRET, "alice")
        second.welcome(session="s2", resume="f" * 32, resumed=True)
        await rig.until(lambda: second.sent("join"))
        assert "took over the previous session: back as alice" in rig.server_notes()
        assert rig.core.session == "s2" and rig.core.resume == "f" * 32

    run(test)


def test_taken_over_ends_the_client_without_a_reconnect() -> None:
    async def test() -> None:
        stream = FakeStream()
        rig = Rig(stream, FakeStream())
        rig.start()
        await rig.welcomed(stream)
        stream.send({"type": "error", "code": "taken_over", "fatal": True,
                     "message": "a new connection took over this session"})
        stream.close()
        exc = await rig.result()
        assert isinstance(exc, TakenOver) and not exc.retry
        assert str(exc) == ("taken_over: a new connection took over this session; "
                            "not reconnecting")
        assert len(rig.opener.attempts) == 1

    run(test)


def test_the_secret_is_kept_in_an_owner_only_state_file_and_not_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    store = StateStore("fake:7777", "alice", tmp_path)

    async def test() -> None:
        stream = FakeStream()
        rig = Rig(stream, store=store)
        rig.start()
        await rig.until(lambda: stream.sent("hello"))
        stream.welcome(session="s1", resume=SECRET)
        # Written at once: the secret in the file before this welcome is worth nothing now.
        await rig.until(lambda: store.path.exists() and SECRET in store.path.read_text())

    run(test)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    loaded = StateStore("fake:7777", "alice", tmp_path).load()
    assert (loaded.session, loaded.resume) == ("s1", SECRET)
    assert SECRET not in caplog.text


def test_a_bad_saved_secret_is_dropped() -> None:
    assert parse({"session": "s1", "resume": "\x1b[2J"}) == ClientState()
    assert parse({"session": "s1", "resume": 5}) == ClientState()
    assert parse({"session": "s1"}) == ClientState()
    assert parse({"session": "s1", "resume": SECRET}).resume == SECRET


def notes(app: TUI) -> list[str]:
    """The lines of the server buffer."""
    return list(app.call(lambda: [ln.text for ln in app.core.model.buffers[SERVER].lines]))


def test_a_silently_dead_link_is_taken_over_under_the_same_nick(tmp_path: Path) -> None:
    """The session process stopped: no FIN, no RST, the server holds alice's nick. The
    client notices the silence, reconnects, and is alice again at once, with every
    message it missed exactly once; bob sees alice neither leave nor come back."""
    data = tmp_path / "server"
    data.mkdir()
    server = ServerProcess(data, {**FAST, "history": {"page": 4}}).start()
    bob = connect(server, "bob")
    bob.join("#general")
    before = set(server.children())
    app = TUI(server.host, server.port, "alice", state_dir=tmp_path / "state",
              keepalive=0.4, dead_after=1.0, backoff_base=0.2, backoff_cap=0.4)
    stopped: int | None = None
    try:
        app.ready()
        first = send(bob, "#general", ["one", "two"])
        wait_ids(app, first)
        bob.sync()
        bob.backlog.clear()
        (child,) = set(server.children()) - before
        os.kill(child, signal.SIGSTOP)
        stopped = child
        gap = send(bob, "#general", [f"gap {i}" for i in range(9)])
        app.wait(lambda: "took over the previous session: back as alice" in notes(app),
                 "the takeover")
        assert app.core.model.nick == "alice"
        app.wait(lambda: app.core.model.conn_state is ConnState.CONNECTED and app.core.ready,
                 "caught up")
        after = send(bob, "#general", ["after"])
        wait_ids(app, first + gap + after)
        bob.sync()
        assert [f for f in bob.backlog if f["type"] in ("join", "quit", "part")] == []
        assert "alice_" not in app.screen()
    finally:
        if stopped is not None:
            kill_quietly(stopped, signal.SIGCONT)
        app.close()
        bob.close()
        server.stop()


def test_a_restarted_client_takes_over_its_half_open_session(tmp_path: Path) -> None:
    data = tmp_path / "server"
    data.mkdir()
    server = ServerProcess(data, FAST).start()
    state = tmp_path / "state"
    bob = connect(server, "bob")
    bob.join("#general")
    before = set(server.children())
    app = TUI(server.host, server.port, "alice", state_dir=state)
    stopped: int | None = None
    again: TUI | None = None
    try:
        app.ready()
        seen = send(bob, "#general", ["seen"])
        wait_ids(app, seen)
        (child,) = set(server.children()) - before
        os.kill(child, signal.SIGSTOP)  # its quit below is never read
        stopped = child
        app.close()
        missed = send(bob, "#general", ["missed 1", "missed 2"])
        again = TUI(server.host, server.port, "alice", state_dir=state)
        again.ready()
        assert again.core.model.nick == "alice"
        assert "took over the previous session: back as alice" in notes(again)
        wait_ids(again, seen + missed)
    finally:
        if stopped is not None:
            kill_quietly(stopped, signal.SIGCONT)
        if again is not None:
            again.close()
        bob.close()
        server.stop()
