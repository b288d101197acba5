"""The full-screen client (prompt_toolkit pipe input, DummyOutput) against a real server.

The application runs in tests/tuirunner.py; the test types keys into the pipe, watches the
other side with the blocking tests/wire.py client, and reads the client's state on the
client's loop. Every wait has a deadline.
"""

from __future__ import annotations

from pathlib import Path

from serverproc import ServerProcess
from tuirunner import ENTER, PGDN, PGUP, TAB, TUI
from wire import Client, connect


def test_typing_a_message_delivers_it(app: TUI, bob: Client) -> None:
    app.type("hello from the app" + ENTER)
    got = bob.wait_type("message", room="#general", text="hello from the app")
    assert got["from"] == "alice"
    app.wait(lambda: any(ln.text == "hello from the app" and ln.state == "ok"
                         and ln.id == got["id"] for ln in app.core.model.cur.lines), "ack")
    assert "alice │ hello from the app" in app.screen()
    assert "(sending…)" not in app.screen()


def test_incoming_messages_and_notices_are_shown(app: TUI, bob: Client,
                                                 server: ServerProcess) -> None:
    bob.say("#general", "hi alice")
    bob.say("#general", "waves", action=True)
    app.wait(lambda: "* │ bob waves" in app.ui.screen_text(100, 30), "action line")  # type: ignore[union-attr]
    assert "bob │ hi alice" in app.screen()
    carol = connect(server, "carol")
    carol.join("#general")
    app.wait(lambda: "carol joined #general" in app.ui.screen_text(100, 30), "join notice")  # type: ignore[union-attr]
    carol.close()
    app.wait(lambda: "carol quit #general" in app.ui.screen_text(100, 30), "quit notice")  # type: ignore[union-attr]


def test_join_switches_to_the_room(app: TUI, bob: Client) -> None:
    app.type("/join #Rust" + ENTER)
    app.wait(lambda: app.core.model.current == "#rust" and app.core.model.cur.joined, "#rust")
    joined, _ = bob.join("#rust")
    assert "alice" in joined["members"]
    app.type("in rust" + ENTER)
    bob.wait_type("message", room="#rust", text="in rust")
    status = app.status()
    assert "[3:#rust]" in status and "2:#general " in status  # current one in brackets


def test_msg_opens_a_direct_buffer(app: TUI, bob: Client) -> None:
    app.type("/msg bob psst" + ENTER)
    got = bob.wait_type("message", to="bob", text="psst")
    assert got["from"] == "alice"
    bob.call({"type": "msg", "to": "alice", "text": "yes?"})
    app.wait(lambda: app.core.model.get("bob") is not None
             and any(ln.text == "yes?" for ln in app.core.model.get("bob").lines), "dm")  # type: ignore[union-attr]
    # Not the current buffer: the status bar counts it as unread and marks it.
    assert "bob(1!)" in app.status()
    app.type("/switch bob" + ENTER)
    app.wait(lambda: app.core.model.current == "bob", "switch")
    screen = app.screen()
    assert "alice │ psst" in screen and "bob │ yes?" in screen
    app.type("and more" + ENTER)
    bob.wait_type("message", to="bob", text="and more")


def test_nick_change(app: TUI, bob: Client) -> None:
    app.type("/nick alice2" + ENTER)
    event = bob.wait_type("nick", room="#general")
    assert (event["old"], event["new"]) == ("alice", "alice2")
    app.wait(lambda: app.core.model.nick == "alice2", "own nick")
    assert "alice2" in app.status()
    app.type("/nick bob" + ENTER)
    app.wait(lambda: "nick_taken" in app.screen(), "nick_taken error")


def test_tab_completion(app: TUI, bob: Client) -> None:
    ui = app.ui
    assert ui is not None

    def text() -> str:
        return str(app.call(lambda: ui.input.text))

    app.type("/jo" + TAB)
    app.wait(lambda: ui.input.text == "/join ", "command completion")
    app.type("#gen" + TAB)
    app.wait(lambda: ui.input.text == "/join #general ", "room completion")
    app.call(lambda: ui.input.reset())
    app.wait(lambda: "bob" in app.core.model.cur.members, "bob listed")
    app.type("bo" + TAB)
    app.wait(lambda: ui.input.text == "bob: ", "nick completion at line start")
    app.type("ask " + "al" + TAB)
    app.wait(lambda: ui.input.text == "bob: ask alice ", "nick completion mid-line")
    app.call(lambda: ui.input.reset())
    app.type("/h" + TAB)
    app.wait(lambda: ui.input.text == "/help ", "first of /help, /history")
    app.type(TAB)
    app.wait(lambda: ui.input.text == "/history ", "cycling on repeated Tab")
    assert text() == "/history "


def test_unknown_command_and_bad_usage_send_nothing(app: TUI, bob: Client) -> None:
    app.type("/frobnicate now" + ENTER)
    app.type("/join" + ENTER)
    app.type("/msg" + ENTER)
    app.type("/nick 9bad" + ENTER)
    app.wait(lambda: "bad nick" in app.ui.screen_text(100, 30), "errors shown")  # type: ignore[union-attr]
    screen = app.screen()
    assert "unknown command /frobnicate" in screen and "usage: /join ROOM" in screen
    app.type("marker" + ENTER)
    # The first thing bob sees from alice after joining is the marker: nothing else went out.
    got = bob.wait(lambda f: f.get("type") in ("message", "nick", "part", "join"))
    assert got["type"] == "message" and got["text"] == "marker"


def test_help_lists_commands(app: TUI) -> None:
    app.type("/help" + ENTER)
    app.wait(lambda: "/history [N]" in app.ui.screen_text(100, 100), "help")  # type: ignore[union-attr]


def test_scrolling_holds_the_view_and_counts_new_lines(app: TUI, bob: Client) -> None:
    for i in range(60):
        bob.request({"type": "msg", "room": "#general", "text": f"line {i}"})
    app.wait(lambda: "line 59" in app.ui.screen_text(100, 30), "all lines")  # type: ignore[union-attr]
    app.type(PGUP)
    app.wait(lambda: app.core.model.cur.anchor is not None, "scrolled")
    before = app.screen()
    assert "line 59" not in before and "more below" in before
    bob.say("#general", "while scrolled")
    app.wait(lambda: app.core.model.cur.new_below == 1, "new line counted")
    assert "1 new below" in app.screen()
    assert "while scrolled" not in app.screen()
    app.type(PGDN + PGDN + PGDN)
    app.wait(lambda: app.core.model.cur.anchor is None, "back at the bottom")
    assert "while scrolled" in app.screen()


def test_buffer_switching_keys(app: TUI, bob: Client) -> None:
    app.type("/join #two" + ENTER)
    app.wait(lambda: app.core.model.current == "#two", "#two")
    app.type("\x1b2")  # Alt+2: the second buffer (#general; the server buffer is 1)
    app.wait(lambda: app.core.model.current == "#general", "Alt+2")
    app.type("\x0e")  # Ctrl+N
    app.wait(lambda: app.core.model.current == "#two", "Ctrl+N")
    app.type("\x10")  # Ctrl+P
    app.wait(lambda: app.core.model.current == "#general", "Ctrl+P")
    app.type("/switch #two" + ENTER)
    app.wait(lambda: app.core.model.current == "#two", "/switch")
    bob.say("#general", "hey alice, look")
    app.wait(lambda: "2:#general(1!)" in app.status(), "mention mark in the status bar")


def test_quit_and_ctrl_d_exit_cleanly(server: ServerProcess, tmp_path: Path,
                                      bob: Client) -> None:
    one = TUI(server.host, server.port, "one", state_dir=tmp_path / "s1")
    one.ready()
    one.type("/quit gone fishing" + ENTER)
    one.thread.join(10)
    assert not one.thread.is_alive() and one.close() == 0
    event = bob.wait_type("quit", room="#general", nick="one")
    assert event["reason"] == "gone fishing"
    two = TUI(server.host, server.port, "two", state_dir=tmp_path / "s2")
    two.ready()
    two.type("\x04")  # Ctrl-D on an empty line
    two.thread.join(10)
    assert two.close() == 0
    bob.wait_type("quit", room="#general", nick="two")


def test_pasted_block_is_one_multiline_message(app: TUI, bob: Client) -> None:
    # A bracketed paste (what terminals and tmux send) lands in the input line; Enter
    # then sends it as one message with its newlines.
    app.type("\x1b[200~first line\r\nsecond line\x1b[201~")
    app.wait(lambda: app.ui.input.text == "first line\nsecond line", "pasted")  # type: ignore[union-attr]
    app.type(ENTER)
    got = bob.wait_type("message", room="#general")
    assert got["text"] == "first line\nsecond line"
    # Alt+Enter adds a line by hand.
    app.type("one\x1b\rtwo" + ENTER)
    assert bob.wait_type("message", room="#general")["text"] == "one\ntwo"


def test_input_history_with_up_and_down(app: TUI, bob: Client) -> None:
    ui = app.ui
    assert ui is not None
    app.type("first" + ENTER)
    app.type("second" + ENTER)
    bob.wait_type("message", text="second")
    app.type("\x1b[A")  # Up
    app.wait(lambda: ui.input.text == "second", "previous line")
    app.type("\x1b[A")
    app.wait(lambda: ui.input.text == "first", "the one before")
    app.type("\x1b[B")  # Down
    app.wait(lambda: ui.input.text == "second", "forward again")


def test_bell_on_mention_and_direct_message(app: TUI, bob: Client) -> None:
    bob.say("#general", "no highlight here")
    app.wait(lambda: "no highlight here" in app.ui.screen_text(100, 30), "plain message")  # type: ignore[union-attr]
    assert app.output.bells == 0
    bob.say("#general", "alice: are you there?")
    app.wait(lambda: app.output.bells == 1, "bell on mention")
    bob.call({"type": "msg", "to": "alice", "text": "psst"})
    app.wait(lambda: app.output.bells == 2, "bell on direct message")


def test_server_errors_show_inline(app: TUI) -> None:
    app.type("/topic #nowhere" + ENTER)
    app.wait(lambda: "error no_such_room" in app.ui.screen_text(100, 30), "inline error")  # type: ignore[union-attr]
    app.type("/part #nowhere" + ENTER)
    app.wait(lambda: "error not_in_room" in app.ui.screen_text(100, 30), "inline error")  # type: ignore[union-attr]
    assert app.thread.is_alive()
