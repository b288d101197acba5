"""The everyday keys and commands in the real full-screen client (pipe input, a real server):
Alt+A, Ctrl+C asking first, Ctrl+R, /switch completion, and what a restart keeps (read
markers, ignores)."""

from __future__ import annotations

from pathlib import Path

from serverproc import ServerProcess
from tuirunner import ENTER, TAB, TUI
from wire import Client

from chat_client.render import READ_MARKER
from chat_client.tui import UIOptions

ALT_A, CTRL_C, CTRL_R, CTRL_G = "\x1ba", "\x03", "\x12", "\x07"
CTRL_F, CTRL_U, F2 = "\x06", "\x15", "\x1bOQ"


def test_alt_a_jumps_to_the_mention_first_then_back(app: TUI, bob: Client) -> None:
    m = app.core.model
    app.type("/join #two" + ENTER)
    app.wait(lambda: m.current == "#two" and m.cur.joined, "#two")
    bob.join("#two")
    app.type("/join #three" + ENTER)
    app.wait(lambda: m.current == "#three" and m.cur.joined, "#three")
    bob.say("#two", "just chatting")
    bob.say("#general", "alice: look at this")
    app.wait(lambda: "2:#general(1!)" in app.status() and "3:#two(1)" in app.status(),
             "both in the hotlist")
    assert app.status().index("2:#general(1!)") < app.status().index("3:#two(1)")
    app.type(ALT_A)
    app.wait(lambda: m.current == "#general", "the mention first")
    app.type(ALT_A)
    app.wait(lambda: m.current == "#two", "then the messages")
    app.type(ALT_A)
    app.wait(lambda: m.current == "#three", "then back where it started")


def test_keys_and_colours_of_the_config_file_apply(server: ServerProcess, bob: Client,
                                                   tmp_path: Path) -> None:
    options = UIOptions(keys={"next_active": ["f2"], "search": ["c-f"]},
                        colours={"mention": "bg:ansigreen fg:ansiblack"})
    app = TUI(server.host, server.port, "alice", state_dir=tmp_path / "s", options=options)
    try:
        app.ready()
        m, ui = app.core.model, app.ui
        assert ui is not None
        app.type("/join #two" + ENTER)
        app.wait(lambda: m.current == "#two" and m.cur.joined, "#two")
        bob.say("#general", "alice: look")
        app.wait(lambda: "2:#general(1!)" in app.status(), "the mention in the hotlist")
        app.type(ALT_A + "x")  # no longer bound: Escape, then typed text
        app.wait(lambda: ui.input.text.endswith("x"), "typed")
        assert m.current == "#two"
        app.type(CTRL_U + F2)
        app.wait(lambda: m.current == "#general", "F2 jumps instead")
        app.type(CTRL_F + "look")
        app.wait(lambda: ui.searching is not None and m.cur.found is not None, "Ctrl+F searches")
        attrs = ui.app.style.get_attrs_for_style_str("class:mention")
        assert (attrs.bgcolor, attrs.color) == ("ansigreen", "ansiblack")
    finally:
        app.close()


def test_ctrl_c_asks_before_losing_a_typed_line(server: ServerProcess,
                                                tmp_path: Path) -> None:
    one = TUI(server.host, server.port, "one", state_dir=tmp_path / "s")
    one.ready()
    ui = one.ui
    assert ui is not None
    one.type("half a thought")
    one.wait(lambda: ui.input.text == "half a thought", "typed")
    one.type(CTRL_C)
    one.wait(lambda: "Ctrl+C again quits" in one.status(), "the question")
    assert one.thread.is_alive()
    one.type("!")  # any other key: carry on
    one.wait(lambda: ui.input.text == "half a thought!", "still typing")
    assert "Ctrl+C again" not in one.status()
    one.type(CTRL_C)
    one.wait(lambda: "Ctrl+C again quits" in one.status(), "asked again")
    one.type(CTRL_C)
    one.thread.join(10)
    assert not one.thread.is_alive() and one.close() == 0


def test_ctrl_r_searches_as_you_type(app: TUI, bob: Client) -> None:
    m, ui = app.core.model, app.ui
    assert ui is not None
    for i in range(80):
        bob.request({"type": "msg", "room": "#general",
                     "text": "the needle is here" if i in (10, 50) else f"hay {i}"})
    app.wait(lambda: "hay 79" in app.screen(), "all lines")
    app.type("draft")
    app.type(CTRL_R + "NEEDLE")
    app.wait(lambda: m.cur.found is not None and m.cur.found.text == "the needle is here"
             and m.cur.anchor is not None, "the newest match")
    newest = m.cur.found
    assert "needle" in app.screen().splitlines()[-2]  # the match is the bottom line shown
    app.type(CTRL_R)
    app.wait(lambda: m.cur.found is not None and m.cur.found is not newest, "the older one")
    older_anchor = m.cur.anchor
    app.type(ENTER)  # stay here; the draft comes back
    app.wait(lambda: ui.searching is None and ui.input.text == "draft", "search ended")
    assert m.cur.anchor == older_anchor
    app.type(CTRL_R + "hay 7")
    app.wait(lambda: m.cur.found is not None and m.cur.found.text == "hay 7",
             "from the view up: hay 7")
    app.type("xyz")
    app.wait(lambda: ui.searching is not None and ui.searching.missed, "no match")
    app.type(CTRL_G)  # back to where the search began
    app.wait(lambda: ui.searching is None and m.cur.anchor == older_anchor, "view restored")
    assert m.cur.found is None and ui.input.text == "draft"


def test_switch_completes_buffer_names(app: TUI) -> None:
    ui = app.ui
    assert ui is not None
    app.type("/join #twelve" + ENTER)
    app.wait(lambda: app.core.model.current == "#twelve", "#twelve")
    app.type("/switch #g" + TAB)
    app.wait(lambda: ui.input.text == "/switch #general ", "completed")
    app.type(ENTER)
    app.wait(lambda: app.core.model.current == "#general", "switched")


def test_read_markers_and_ignores_survive_a_restart(server: ServerProcess,
                                                    bob: Client, tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = TUI(server.host, server.port, "alice", state_dir=state, rooms=("#general", "#two"))
    first.wait(lambda: all(b.joined for b in first.core.model.order() if b.kind == "room"),
               "both joined")
    m = first.core.model
    first.type("/ignore troll" + ENTER)
    bob.say("#general", "read this before")
    first.wait(lambda: "read this before" in first.screen(), "seen in #general")
    first.type("/switch #two" + ENTER)
    first.wait(lambda: m.current == "#two", "away from #general")
    bob.say("#general", "said while alice was in #two")
    first.wait(lambda: m.get("#general").unread == 1, "unread")  # type: ignore[union-attr]
    first.type("\x04")  # Ctrl+D: quit
    first.thread.join(10)
    assert first.close() == 0
    bob.say("#general", "said while alice was gone")
    troll = Client(server.host, server.port)
    troll.hello("troll")
    troll.join("#general")
    troll.say("#general", "alice: you will see this")

    again = TUI(server.host, server.port, "alice", state_dir=state, rooms=("#general",))
    again.ready()
    again.type("/switch #general" + ENTER)  # (the restart restored #two as the current one)
    again.wait(lambda: "said while alice was gone" in again.screen(), "caught up")
    rows = again.screen().splitlines()
    at = next(i for i, row in enumerate(rows) if READ_MARKER.strip() in row)
    assert "read this before" in rows[at - 1]
    assert "said while alice was in #two" in rows[at + 1]
    assert "you will see this" not in again.screen()  # still ignored
    assert "troll" in again.core.model.ignored
    troll.close()
    again.close()
