"""The status bar: a hotlist that never hides a mention, Alt+A, and a lag that never lies."""

from __future__ import annotations

from chat_client.buffer import HOT, LOW, MSG, NONE, SERVER, Line
from chat_client.clock import Clock
from chat_client.lifecycle import ConnState
from chat_client.model import Model
from chat_client.statusbar import lag_text, status

ROOMS = ["#general", "#rust", "#python", "#closures", "#announcements", "#random",
         "#offtopic", "#golang", "#kubernetes", "#closures-and-more", "#meta", "#help"]


def text(m: Model, width: int) -> str:
    return "".join(t for _, t in status(m, width))


def said(m: Model, room: str, words: str = "hello", nick: str = "bob") -> None:
    buf = m.room(room)
    m.add(buf, Line("message", 0, words, nick=nick, id=buf.last_id + 1))


def twelve_rooms() -> Model:
    """The reported case: twelve rooms besides the server buffer, something said in each
    but the current one, and a mention in the last."""
    m = Model("alice")
    m.conn_state, m.lag_ms = ConnState.CONNECTED, 12.0
    for room in ROOMS:
        m.room(room)
    m.switch("#general")
    for room in ROOMS[1:-1]:
        said(m, room)
    said(m, "#help", "alice: can you help?")
    return m


def test_a_mention_in_the_last_buffer_is_never_hidden() -> None:
    m = twelve_rooms()
    for width in (200, 120, 100, 80, 60):
        bar = text(m, width)
        assert len(bar) <= width, (width, bar)
        # Right after the current buffer: buffer 13, with its mention mark.
        after_current = bar.split("[2:", 1)[1].split("] ", 1)[1]
        assert after_current.startswith(("13:#help(1!)", "13(1!)")), (width, bar)
    assert "13:#help(1!)" in text(m, 120)  # at 120 columns even with its name


def test_the_most_important_first_then_by_number() -> None:
    m = Model("alice")
    for room in ("#a", "#b", "#c", "#d"):
        m.room(room)
    m.switch("#a")
    m.note(m.room("#b"), "carol joined #b", "notice")
    said(m, "#c")
    m.add(m.dm("dave"), Line("message", 0, "psst", nick="dave", id=1))
    said(m, "#d", "ALICE, look")  # a look-alike case of my nick is a mention too
    assert [b.key for b in m.hotlist()] == ["#d", "dave", "#c", "#b"]
    assert [m.get(k).activity for k in ("#b", "#c", "#d", "dave")] == [LOW, MSG, HOT, HOT]  # type: ignore[union-attr]
    bar = text(m, 120)
    assert "[2:#a] 5:#d(1!) 6:dave(1!) 4:#c(1) 3:#b 1:server" in bar


def test_the_server_buffer_is_listed_with_its_activity() -> None:
    m = Model("alice")
    m.room("#a")
    m.switch("#a")
    m.note(m.get(SERVER), "the MOTD", "info")
    assert m.get(SERVER).activity == LOW  # type: ignore[union-attr]
    assert text(m, 80).split("[2:#a] ", 1)[1].startswith("1:server")
    m.note(m.get(SERVER), "error storage_unavailable", "error")
    assert m.get(SERVER).activity == MSG  # type: ignore[union-attr]


def test_own_lines_backlog_and_the_current_buffer_make_no_activity() -> None:
    m = Model("alice")
    m.room("#a")
    m.room("#b")
    m.switch("#a")
    m.add(m.get("#a"), Line("message", 0, "hi", nick="bob", id=1))  # current
    m.add(m.get("#b"), Line("message", 0, "mine", nick="alice", id=2, own=True))
    m.add(m.get("#b"), Line("message", 0, "old", nick="bob", id=1), new=False)
    assert m.get("#a").activity == m.get("#b").activity == NONE  # type: ignore[union-attr]
    assert m.hotlist() == []


def test_when_nothing_else_fits_the_rest_is_counted() -> None:
    m = twelve_rooms()
    bar = text(m, 62)
    assert "13(1!)" in bar and bar.rstrip().endswith(("+9", "+8", "+10"))
    # With more mentions than fit, the count says a hidden one holds one too.
    for room in ROOMS[1:6]:
        said(m, room, "alice!")
    bar = text(m, 50)
    assert "!" in bar.split()[-1], bar


def test_a_topic_gives_way_to_the_hotlist() -> None:
    m = twelve_rooms()
    m.get("#general").joined = True  # type: ignore[union-attr]
    m.get("#general").topic = "A long topic about many things " * 3  # type: ignore[union-attr]
    assert "A long topic" in text(m, 400)
    narrow = text(m, 120)
    assert "13:#help(1!)" in narrow and len(narrow) <= 120


def test_alt_a_goes_to_the_most_important_then_back() -> None:
    m = Model("alice")
    for room in ("#a", "#b", "#c"):
        m.room(room)
    m.switch("#a")
    said(m, "#b")
    said(m, "#c", "alice?")
    assert m.jump_active() and m.current == "#c"  # the mention first
    assert m.jump_active() and m.current == "#b"
    assert m.jump_active() and m.current == "#a"  # nothing left: back where it began
    assert not m.jump_active() and m.current == "#a"


def test_lag_while_a_ping_waits_is_the_time_waited_growing() -> None:
    assert lag_text(None, None) == ""
    assert lag_text(35.0, None) == "lag 35 ms"
    assert lag_text(35.0, 20.0) == "lag 35 ms"  # not yet longer than the last figure
    assert lag_text(35.0, 2500.0) == "lag 2.5 s…"
    assert lag_text(35.0, 12000.0) == "lag 12 s…"
    assert lag_text(None, 400.0) == ""  # the first ping: nothing known yet
    assert lag_text(None, 1500.0) == "lag 1.5 s…"


def test_the_status_bar_counts_the_wait_on_the_models_clock() -> None:
    from chat_client.core import Core

    now = [100.0]
    core = Core("alice", ["#a"], clock=Clock(monotonic=lambda: now[0]))
    m = core.model
    core.connected()
    hello = core.take_outbox()[0]
    core.receive({"type": "welcome", "version": 1, "nick": "alice", "label": hello["label"]})
    m.conn_state = ConnState.CONNECTED
    core.ping(now[0])
    ping = next(f for f in core.take_outbox() if f["type"] == "ping")
    now[0] += 0.040
    core.receive({"type": "pong", "token": ping["token"]}, now[0])
    assert "lag 40 ms" in text(m, 80) and m.ping_since is None
    core.ping(now[0])  # the next ping goes unanswered: the server is stuck
    for waited, shown in ((0.02, "lag 40 ms"), (3.0, "lag 3.0 s…"), (7.5, "lag 7.5 s…")):
        now[0] += waited - (now[0] - m.ping_since)  # type: ignore[operator]
        assert shown in text(m, 80)
    core.disconnected("gone")
    assert m.ping_since is None and m.lag_ms is None


def test_what_we_did_ourselves_is_no_activity() -> None:
    """Joining twelve rooms on start, a lost connection, a nick change: none of it is
    news, so none of it lights the hotlist; someone else joining is."""
    from chat_client.core import Core

    core = Core("alice", ROOMS[:4])
    core.connected()
    hello = core.take_outbox()[0]
    core.receive({"type": "welcome", "version": 1, "nick": "alice", "label": hello["label"]})
    for frame in core.take_outbox():
        core.receive({"type": "joined", "room": frame["room"], "members": ["alice"],
                      "label": frame["label"]})
        core.receive({"type": "history", "room": frame["room"], "messages": [],
                      "label": frame["label"]})
    m = core.model
    core.receive({"type": "nick", "old": "alice", "new": "alice2", "ts": 1})
    core.disconnected("the server went away")
    assert m.current == "#general" and m.hotlist() == []
    core.receive({"type": "join", "room": "#rust", "nick": "bob", "ts": 2})
    assert [(b.key, b.activity) for b in m.hotlist()] == [("#rust", LOW)]
